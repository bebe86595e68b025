#!/usr/bin/env bash
# POPE (COCO, POPE commit e3e39262: 3000/3000/2910) as LLaVA-1.5's scripts/v1_5/eval/pope.sh; mean_f1 is the
# number the paper reports.
#   usage: bash scripts/eval/pope.sh MODEL    (EVAL_DIR defaults to LLaVA's ./playground/data/eval)
set -euo pipefail
MODEL=$1
CKPT=$(basename "$MODEL")
EVAL_DIR=${EVAL_DIR:-./playground/data/eval}
SPLIT=llava_pope_test
ANSWERS=$EVAL_DIR/pope/answers/$SPLIT/$CKPT

bash "$(dirname "$0")/run_chunks.sh" "$MODEL" "$EVAL_DIR/pope/$SPLIT.jsonl" "$EVAL_DIR/pope/val2014" "$ANSWERS"

radio-llava score --benchmark pope \
    --answers "$ANSWERS/merge.jsonl" \
    --annotations "$EVAL_DIR/pope/coco" \
    --questions "$EVAL_DIR/pope/$SPLIT.jsonl" \
    --out "$ANSWERS/metrics.json" \
    --per-question-out "$ANSWERS/scores.jsonl"
