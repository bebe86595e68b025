#!/usr/bin/env bash
# LLaVA-1.5 stage 2 with LoRA (r 128, alpha 256; projector lr 2e-5), then the merged model in OUT-merged.
# Hyper-parameters are `radio-llava train --stage lora`'s defaults (LLaVA-1.5's scripts/v1_5/finetune_lora.sh).
# Tiny CPU smoke run: see pretrain.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

VISION_TOWER=${VISION_TOWER:-checkpoints/radio}
LLM=${LLM:-checkpoints/vicuna-7b-v1.5}
PROJECTOR=${PROJECTOR:-checkpoints/radio-llava-v1.5-7b-pretrain}
DATA=${DATA:-playground/data/llava_v1_5_mix665k.json}
IMAGES=${IMAGES:-playground/data}
OUT=${OUT:-checkpoints/radio-llava-v1.5-7b-lora}
NUM_GPUS=${NUM_GPUS:-8}
PYTHON=${PYTHON:-.venv/bin/python}

${PYTHON} -m torch.distributed.run --nproc_per_node "${NUM_GPUS}" -m llava_patch.cli train \
    --stage lora \
    --vision-tower "${VISION_TOWER}" --llm "${LLM}" --pretrained-projector "${PROJECTOR}" \
    --data "${DATA}" --image-folder "${IMAGES}" \
    --deepspeed scripts/zero3.json \
    --output-dir "${OUT}" ${EXTRA:-}
${PYTHON} -m llava_patch.cli merge-lora "${OUT}" "${OUT}-merged"
