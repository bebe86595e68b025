#!/usr/bin/env bash
# TextVQA val as LLaVA-1.5's scripts/v1_5/eval/textvqa.sh, scored as LLaVA does, with either prompt convention:
#   with-ocr     LLaVA-1.5's llava_textvqa_val_v051_ocr.jsonl ("Reference OCR token: ..." in the prompt; default)
#   without-ocr  lmms-eval's prompt without OCR tokens (llava_textvqa_val_v051_no_ocr.jsonl, written from the first)
#   usage: bash scripts/eval/textvqa.sh MODEL [with-ocr|without-ocr]   (EVAL_DIR defaults to ./playground/data/eval)
set -euo pipefail
MODEL=$1
PROMPT=${2:-with-ocr}
CKPT=$(basename "$MODEL")
EVAL_DIR=${EVAL_DIR:-./playground/data/eval}
OCR_SPLIT=llava_textvqa_val_v051_ocr
case $PROMPT in
    with-ocr) SPLIT=$OCR_SPLIT ;;
    without-ocr)
        SPLIT=llava_textvqa_val_v051_no_ocr
        [ -f "$EVAL_DIR/textvqa/$SPLIT.jsonl" ] ||
            radio-llava textvqa-no-ocr "$EVAL_DIR/textvqa/$OCR_SPLIT.jsonl" "$EVAL_DIR/textvqa/$SPLIT.jsonl"
        ;;
    *) echo "usage: $0 MODEL [with-ocr|without-ocr]" >&2; exit 2 ;;
esac
ANSWERS=$EVAL_DIR/textvqa/answers/$SPLIT/$CKPT

bash "$(dirname "$0")/run_chunks.sh" "$MODEL" "$EVAL_DIR/textvqa/$SPLIT.jsonl" "$EVAL_DIR/textvqa/train_images" "$ANSWERS"

radio-llava score --benchmark textvqa \
    --answers "$ANSWERS/merge.jsonl" \
    --annotations "$EVAL_DIR/textvqa/TextVQA_0.5.1_val.json" \
    --out "$ANSWERS/metrics.json" \
    --per-question-out "$ANSWERS/scores.jsonl"
