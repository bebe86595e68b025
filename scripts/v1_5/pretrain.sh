#!/usr/bin/env bash
# LLaVA-1.5 stage 1 with RADIO: projector pretraining on LLaVA-Pretrain (blip_laion_cc_sbu_558k).
# Hyper-parameters are `radio-llava train --stage pretrain`'s defaults (LLaVA-1.5's scripts/v1_5/pretrain.sh).
# Override any path through the environment, e.g. the CPU smoke run with tiny twins:
#   VISION_TOWER=tiny-radio LLM=tiny-llama DATA=demo/train/pretrain.json IMAGES=demo/train/images \
#   NUM_GPUS=1 EXTRA="--max-steps 5 --long-edge 64 --global-batch-size 4 --per-device-batch-size 4" bash scripts/v1_5/pretrain.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

VISION_TOWER=${VISION_TOWER:-checkpoints/radio}          # a `radio-vlm convert` output folder
LLM=${LLM:-checkpoints/vicuna-7b-v1.5}
DATA=${DATA:-playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}
IMAGES=${IMAGES:-playground/data/LLaVA-Pretrain/images}
OUT=${OUT:-checkpoints/radio-llava-v1.5-7b-pretrain}
NUM_GPUS=${NUM_GPUS:-8}
PYTHON=${PYTHON:-.venv/bin/python}

${PYTHON} -m torch.distributed.run --nproc_per_node "${NUM_GPUS}" -m llava_patch.cli train \
    --stage pretrain \
    --vision-tower "${VISION_TOWER}" --llm "${LLM}" \
    --data "${DATA}" --image-folder "${IMAGES}" \
    --deepspeed scripts/zero2.json \
    --output-dir "${OUT}" ${EXTRA:-}
