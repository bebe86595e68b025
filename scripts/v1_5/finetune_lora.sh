#!/usr/bin/env bash
# LLaVA-1.5 stage 2 with LoRA (r 128, alpha 256; projector lr 2e-5), then the merged model in OUT-merged.
# Hyper-parameters are `radio-llava train --stage lora`'s defaults (LLaVA-1.5's scripts/v1_5/finetune_lora.sh).
# The paths and launch are finetune.sh's (override them the same way). Tiny CPU smoke run: see pretrain.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

export OUT=${OUT:-checkpoints/radio-llava-v1.5-7b-lora}
STAGE=lora bash scripts/v1_5/finetune.sh
${PYTHON:-.venv/bin/python} -m llava_patch.cli merge-lora "${OUT}" "${OUT}-merged"
