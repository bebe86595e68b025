#!/usr/bin/env bash
# LLaVA-1.5 stage 2 with RADIO: instruction tuning of the LLM + projector on llava_v1_5_mix665k.
# Hyper-parameters are `radio-llava train --stage finetune`'s defaults (LLaVA-1.5's scripts/v1_5/finetune.sh).
# PROJECTOR is the pretrain output folder (or its mm_projector.bin); STAGE=lora is finetune_lora.sh.
# Tiny CPU smoke run: see pretrain.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

VISION_TOWER=${VISION_TOWER:-checkpoints/radio}
LLM=${LLM:-checkpoints/vicuna-7b-v1.5}
PROJECTOR=${PROJECTOR:-checkpoints/radio-llava-v1.5-7b-pretrain}
DATA=${DATA:-playground/data/llava_v1_5_mix665k.json}
IMAGES=${IMAGES:-playground/data}
OUT=${OUT:-checkpoints/radio-llava-v1.5-7b}
STAGE=${STAGE:-finetune}
NUM_GPUS=${NUM_GPUS:-8}
PYTHON=${PYTHON:-.venv/bin/python}

${PYTHON} -m torch.distributed.run --nproc_per_node "${NUM_GPUS}" -m llava_patch.cli train \
    --stage "${STAGE}" \
    --vision-tower "${VISION_TOWER}" --llm "${LLM}" --pretrained-projector "${PROJECTOR}" \
    --data "${DATA}" --image-folder "${IMAGES}" \
    --deepspeed scripts/zero3.json \
    --output-dir "${OUT}" ${EXTRA:-}
