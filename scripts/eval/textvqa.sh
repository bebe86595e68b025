#!/usr/bin/env bash
# TextVQA val (with LLaVA's OCR-token prompts) as LLaVA-1.5's scripts/v1_5/eval/textvqa.sh, scored as LLaVA does.
#   usage: bash scripts/eval/textvqa.sh MODEL    (EVAL_DIR defaults to LLaVA's ./playground/data/eval)
set -euo pipefail
MODEL=$1
CKPT=$(basename "$MODEL")
EVAL_DIR=${EVAL_DIR:-./playground/data/eval}
SPLIT=llava_textvqa_val_v051_ocr
ANSWERS=$EVAL_DIR/textvqa/answers/$SPLIT/$CKPT

bash "$(dirname "$0")/run_chunks.sh" "$MODEL" "$EVAL_DIR/textvqa/$SPLIT.jsonl" "$EVAL_DIR/textvqa/train_images" "$ANSWERS"

radio-llava score --benchmark textvqa \
    --answers "$ANSWERS/merge.jsonl" \
    --annotations "$EVAL_DIR/textvqa/TextVQA_0.5.1_val.json" \
    --out "$ANSWERS/metrics.json" \
    --per-question-out "$ANSWERS/scores.jsonl"
