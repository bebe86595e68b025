"""`radio-llava score`: score a LLaVA answers file with the official rules of one benchmark.

    radio-llava score --benchmark {vqav2,textvqa,gqa,pope} --answers A.jsonl --annotations PATH
        [--questions PATH] [--out metrics.json] [--per-question-out scores.jsonl] [--submission-out upload.json]

Prints the metrics JSON and writes it to --out. --per-question-out writes one JSON line per question,
`{"question_id", "prediction", "score", ...}`: score in 0..1 (VQA soft accuracy for vqav2 / textvqa, 0 or 1
for gqa and pope); prediction is the raw model text for vqav2 / textvqa, the converted prediction for gqa, the
parsed yes/no for pope; questions without an answer are listed with score null and "missing": true.

What each benchmark needs:
  vqav2    --annotations v2_mscoco_val2014_annotations.json (val accuracy), and/or
           --submission-out upload.json --questions test-dev/test2015 questions (EvalAI upload; no annotations)
  textvqa  --annotations TextVQA_0.5.1_val.json
  gqa      --annotations testdev_balanced_questions.json
  pope     --annotations folder with coco_pope_{adversarial,popular,random}.json --questions llava_pope_test.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llava_patch.eval.gqa import score_gqa
from llava_patch.eval.io import EvalInputError, ScoreResult, write_json, write_jsonl
from llava_patch.eval.pope import score_pope
from llava_patch.eval.textvqa import score_textvqa
from llava_patch.eval.vqa import build_submission, score_vqav2

BENCHMARKS = ("vqav2", "textvqa", "gqa", "pope")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    parser.add_argument(
        "--answers", required=True, help="LLaVA answers JSONL (radio-llava generate / merge output)"
    )
    parser.add_argument("--annotations", help="official annotations (a folder of label files for pope)")
    parser.add_argument(
        "--questions", help="pope: llava_pope_test.jsonl; vqav2 upload: test-dev/test2015 questions"
    )
    parser.add_argument("--out", help="write the metrics JSON here too")
    parser.add_argument("--per-question-out", help="write one JSON line per question here")
    parser.add_argument("--submission-out", help="vqav2 only: write the EvalAI upload JSON here")


def score(args: argparse.Namespace) -> ScoreResult:
    """Run the chosen benchmark's scorer; raises EvalInputError on bad input or a wrong combination of flags."""
    if args.submission_out and args.benchmark != "vqav2":
        raise EvalInputError("--submission-out is only for --benchmark vqav2 (the EvalAI test-dev upload)")
    if args.benchmark == "vqav2":
        return _score_vqav2(args)
    if not args.annotations:
        raise EvalInputError(
            f"--benchmark {args.benchmark} needs --annotations (see radio-llava score --help)"
        )
    if args.benchmark == "textvqa":
        return score_textvqa(args.answers, args.annotations)
    if args.benchmark == "gqa":
        return score_gqa(args.answers, args.annotations)
    if not args.questions:
        raise EvalInputError(
            "--benchmark pope needs --questions llava_pope_test.jsonl (it gives each question's category)"
        )
    return score_pope(args.answers, args.annotations, args.questions)


def _score_vqav2(args: argparse.Namespace) -> ScoreResult:
    if not args.annotations and not args.submission_out:
        raise EvalInputError(
            "--benchmark vqav2 needs --annotations (val accuracy) or --submission-out with --questions (test-dev upload)"
        )
    result = ScoreResult({"benchmark": "vqav2"})
    if args.annotations:
        result = score_vqav2(args.answers, args.annotations)
    if args.submission_out:
        if not args.questions:
            raise EvalInputError(
                "--submission-out needs --questions: the test-dev or test2015 question file to cover"
            )
        upload, coverage = build_submission(args.answers, args.questions)
        write_json(args.submission_out, upload)  # json.dump defaults, as LLaVA writes it
        result.metrics["submission"] = {"path": str(args.submission_out), **coverage}
    return result


def run(args: argparse.Namespace) -> int:
    try:
        result = score(args)
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _write_outputs(result, args)
    return 0


def _write_outputs(result: ScoreResult, args: Any) -> None:
    if args.out:
        write_json(args.out, result.metrics, indent=2)
    if args.per_question_out:
        write_jsonl(args.per_question_out, result.per_question)
    print(json.dumps(result.metrics, indent=2))
