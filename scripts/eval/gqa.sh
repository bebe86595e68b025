#!/usr/bin/env bash
# GQA testdev-balanced as LLaVA-1.5's scripts/v1_5/eval/gqa.sh: chunked generation, merge, official scoring.
#   usage: bash scripts/eval/gqa.sh MODEL    (EVAL_DIR defaults to LLaVA's ./playground/data/eval)
set -euo pipefail
MODEL=$1
CKPT=$(basename "$MODEL")
EVAL_DIR=${EVAL_DIR:-./playground/data/eval}
SPLIT=llava_gqa_testdev_balanced
ANSWERS=$EVAL_DIR/gqa/answers/$SPLIT/$CKPT

bash "$(dirname "$0")/run_chunks.sh" "$MODEL" "$EVAL_DIR/gqa/$SPLIT.jsonl" "$EVAL_DIR/gqa/data/images" "$ANSWERS"

radio-llava score --benchmark gqa \
    --answers "$ANSWERS/merge.jsonl" \
    --annotations "$EVAL_DIR/gqa/data/testdev_balanced_questions.json" \
    --out "$ANSWERS/metrics.json" \
    --per-question-out "$ANSWERS/scores.jsonl"
