"""`radio-llava merge`: join the answer files of N chunks into one, in question order.

    radio-llava merge --answers-dir answers/gqa/ckpt --num-chunks 8 --out answers/gqa/ckpt/merge.jsonl

Chunk k is `{num_chunks}_{k}.jsonl` (LLaVA-1.5's scripts/v1_5/eval/*.sh naming). Chunks are contiguous slices
of the question file (see `llava_patch.eval.generate.chunk_slice`), so concatenating them in index order gives
question order, as LLaVA's `cat` does. Unlike `cat`, a missing chunk file or a chunk with a half-written last
line (an interrupted run) is an error that names the file and line, and a line without a trailing newline
never glues itself onto the next chunk's first line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llava_patch.eval.io import EvalInputError, read_jsonl, write_jsonl


def chunk_file(answers_dir: str | Path, num_chunks: int, chunk_idx: int) -> Path:
    """Where chunk `chunk_idx` of `num_chunks` writes its answers (LLaVA's `${CHUNKS}_${IDX}.jsonl`)."""
    return Path(answers_dir) / f"{num_chunks}_{chunk_idx}.jsonl"


def merge_chunks(paths: list[Path], out: str | Path, question_file: str | Path | None = None) -> int:
    """Concatenate answer files in the given order into `out`; returns the number of answers written.

    With `question_file`, answers are put in that file's question order instead, a repeated question id keeps
    its last answer, and questions without an answer are reported on stderr.
    """
    rows = []
    for path in paths:
        for number, row in read_jsonl(path):  # validates every line, naming file and line
            if not isinstance(row, dict) or "question_id" not in row:
                raise EvalInputError(f"{path}:{number}: not an answer line (no question_id)")
            rows.append(row)
    if question_file is not None:
        by_id = {row["question_id"]: row for row in rows}
        order = []
        for number, row in read_jsonl(question_file):
            if not isinstance(row, dict) or "question_id" not in row:
                raise EvalInputError(f"{question_file}:{number}: a LLaVA question needs a question_id")
            order.append(row["question_id"])
        missing = [qid for qid in order if qid not in by_id]
        if missing:
            print(f"warning: {len(missing)} questions have no answer (first: {missing[:5]})", file=sys.stderr)
        rows = [by_id[qid] for qid in order if qid in by_id]
    write_jsonl(out, rows)
    return len(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--answers-dir", help="folder holding {num_chunks}_{k}.jsonl chunk files")
    parser.add_argument("--num-chunks", type=int, help="how many chunks the questions were split into")
    parser.add_argument("--out", required=True, help="merged answers file (e.g. .../merge.jsonl)")
    parser.add_argument(
        "--question-file", help="optional: order answers as this LLaVA question file, drop repeats"
    )
    parser.add_argument("inputs", nargs="*", help="explicit chunk files, in order (instead of --answers-dir)")


def run(args: argparse.Namespace) -> int:
    if args.inputs:
        paths = [Path(p) for p in args.inputs]
    elif args.answers_dir and args.num_chunks:
        paths = [chunk_file(args.answers_dir, args.num_chunks, k) for k in range(args.num_chunks)]
    else:
        print("error: give --answers-dir and --num-chunks, or the chunk files in order", file=sys.stderr)
        return 2
    try:
        count = merge_chunks(paths, args.out, args.question_file)
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"merged {count} answers from {len(paths)} files into {args.out}")
    return 0
