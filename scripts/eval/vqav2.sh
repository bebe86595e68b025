#!/usr/bin/env bash
# VQAv2 test-dev as LLaVA-1.5's scripts/v1_5/eval/vqav2.sh: chunked generation, merge, and the EvalAI upload file
# (every test2015 question, answers processed as convert_vqav2_for_submission.py does) for challenge 830.
#   usage: bash scripts/eval/vqav2.sh MODEL    (EVAL_DIR defaults to LLaVA's ./playground/data/eval)
# For a local score on val instead: SPLIT=llava_vqav2_mscoco_val2014 IMAGES=.../val2014 \
#   ANNOTATIONS=.../v2_mscoco_val2014_annotations.json bash scripts/eval/vqav2.sh MODEL
set -euo pipefail
MODEL=$1
CKPT=$(basename "$MODEL")
EVAL_DIR=${EVAL_DIR:-./playground/data/eval}
SPLIT=${SPLIT:-llava_vqav2_mscoco_test-dev2015}
IMAGES=${IMAGES:-$EVAL_DIR/vqav2/test2015}
ANSWERS=$EVAL_DIR/vqav2/answers/$SPLIT/$CKPT

bash "$(dirname "$0")/run_chunks.sh" "$MODEL" "$EVAL_DIR/vqav2/$SPLIT.jsonl" "$IMAGES" "$ANSWERS"

if [ -n "${ANNOTATIONS:-}" ]; then
    radio-llava score --benchmark vqav2 --answers "$ANSWERS/merge.jsonl" --annotations "$ANNOTATIONS" \
        --out "$ANSWERS/metrics.json" --per-question-out "$ANSWERS/scores.jsonl"
else
    radio-llava score --benchmark vqav2 --answers "$ANSWERS/merge.jsonl" \
        --questions "$EVAL_DIR/vqav2/llava_vqav2_mscoco_test2015.jsonl" \
        --submission-out "$EVAL_DIR/vqav2/answers_upload/$SPLIT/$CKPT.json" \
        --out "$ANSWERS/metrics.json"
fi
