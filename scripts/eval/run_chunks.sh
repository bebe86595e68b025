#!/usr/bin/env bash
# Generate answers for one LLaVA question file in N parallel chunks (one per GPU in CUDA_VISIBLE_DEVICES), then
# merge them in question order: the loop of LLaVA-1.5's scripts/v1_5/eval/*.sh, shared by the benchmark scripts.
#   usage: run_chunks.sh MODEL QUESTION_FILE IMAGE_FOLDER ANSWERS_DIR [extra radio-llava generate args]
# Writes ANSWERS_DIR/{N}_{k}.jsonl and ANSWERS_DIR/merge.jsonl. Re-running resumes unfinished chunks.
set -euo pipefail
MODEL=$1 QUESTIONS=$2 IMAGES=$3 ANSWERS_DIR=$4
shift 4

IFS=',' read -ra GPULIST <<< "${CUDA_VISIBLE_DEVICES:-0}"
CHUNKS=${#GPULIST[@]}
mkdir -p "$ANSWERS_DIR"

pids=()
for IDX in $(seq 0 $((CHUNKS - 1))); do
    CUDA_VISIBLE_DEVICES=${GPULIST[$IDX]} radio-llava generate \
        --model "$MODEL" \
        --question-file "$QUESTIONS" \
        --image-folder "$IMAGES" \
        --answers-file "$ANSWERS_DIR/${CHUNKS}_${IDX}.jsonl" \
        --num-chunks "$CHUNKS" \
        --chunk-idx "$IDX" \
        --temperature 0 \
        "$@" &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done  # fail if any chunk failed

radio-llava merge --answers-dir "$ANSWERS_DIR" --num-chunks "$CHUNKS" --out "$ANSWERS_DIR/merge.jsonl"
