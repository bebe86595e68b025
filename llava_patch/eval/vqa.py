"""VQAv2: the official VQA accuracy on val, and the EvalAI upload file for test-dev as LLaVA-1.5 builds it.

Val scoring reproduces GT-Vision-Lab/VQA vqaEval.py (HEAD, "Fixed processing answers bug", Python 2.7):

1. Every human answer and the prediction: '\\n' and '\\t' to spaces, then strip.
2. Unanimity gate: only when the ten stripped human answers are NOT all identical are they and the
   prediction normalised (`vqa_normalize`). With ten identical answers the comparison is raw, case-sensitive
   and exact, so "Yes" scores 0 against 10 x "yes". This is the official behaviour since the 2021 fix; we keep
   it because the published numbers (and EvalAI) are computed that way.
3. Leave-one-out: for each human answer g, the others are `[x for x in answers if x != g]`, a *dict*
   inequality over the whole answer record. With the official annotations `answer_id` makes every record
   unique, so exactly one is left out; records without `answer_id` that are equal all drop out together (a
   synthetic 10 x {"answer": "yes", "answer_confidence": "yes"} scores 0). We compare records the same way.
   acc_g = min(1, matches / 3); the question's accuracy is sum(acc_g) / len(answers), in 0..1.
4. `accuracy` and each `per_answer_type` / `per_question_type` entry are 100 * mean of the unrounded
   per-question accuracies, rounded to 2 decimals with Python 2's round() (ties away from zero).

The test-dev upload follows LLaVA's scripts/convert_vqav2_for_submission.py: one entry per question of
`--questions` in its order, the answer passed through `llava_answer_processor` (MMF's EvalAIAnswerProcessor),
"" for questions without an answer, and for a repeated question id the last line wins. LLaVA skips and
counts answer lines it cannot parse; here they are an error naming the line, because an upload silently
missing answers scores those questions as wrong.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llava_patch.eval.io import (
    EvalInputError,
    QuestionId,
    ScoreResult,
    answers_by_question,
    check_question_id,
    coverage_metrics,
    missing_record,
    read_json,
    read_jsonl,
)
from llava_patch.eval.normalize import llava_answer_processor, strip_answer, vqa_normalize


def py2_round(value: float, ndigits: int = 2) -> float:
    """Python 2.7's round(): correctly rounded from the exact binary value, halfway cases away from zero."""
    return float(Decimal(value).quantize(Decimal(1).scaleb(-ndigits), rounding=ROUND_HALF_UP))


def vqa_accuracy(prediction: str, human_answers: list[dict[str, Any]]) -> float:
    """Official VQA accuracy of one prediction against the human answer records, in 0..1."""
    records = [dict(record, answer=strip_answer(record["answer"])) for record in human_answers]
    prediction = strip_answer(prediction)
    if len({record["answer"] for record in records}) > 1:  # the unanimity gate (module docstring, step 2)
        for record in records:
            record["answer"] = vqa_normalize(record["answer"])
        prediction = vqa_normalize(prediction)
    per_left_out = []
    for left_out in records:
        others = [record for record in records if record != left_out]  # dict inequality, step 3
        matches = sum(1 for record in others if record["answer"] == prediction)
        per_left_out.append(min(1, float(matches) / 3))
    # same expression and summation order as vqaEval.py, so the float is bit-identical
    return float(sum(per_left_out)) / len(per_left_out)


def _mean_percent(values: list[float]) -> float:
    return py2_round(100 * float(sum(values)) / len(values), 2)


def load_vqa_annotations(path: str | Path) -> dict[QuestionId, dict[str, Any]]:
    """v2_mscoco_val2014_annotations.json -> {question_id: annotation}; a repeated id keeps the last one."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise EvalInputError(
            f"{path}: expected the official VQA annotations ({{'annotations': [...]}}, "
            "e.g. v2_mscoco_val2014_annotations.json)"
        )
    annotations = {}
    for index, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{index}]"
        if not isinstance(ann, dict) or "question_id" not in ann:
            raise EvalInputError(f"{where}: each annotation needs a question_id")
        answers = ann.get("answers")
        if not isinstance(answers, list) or not answers:
            raise EvalInputError(
                f"{where} (question {ann['question_id']}): 'answers' must be a non-empty list"
            )
        for record in answers:
            if not isinstance(record, dict) or not isinstance(record.get("answer"), str):
                raise EvalInputError(
                    f"{where} (question {ann['question_id']}): each answer needs a string 'answer'"
                )
        for key in ("answer_type", "question_type"):
            if key not in ann:
                raise EvalInputError(f"{where} (question {ann['question_id']}): missing '{key}'")
        annotations[check_question_id(ann["question_id"], where)] = ann
    return annotations


def score_vqav2(answers_path: str | Path, annotations_path: str | Path) -> ScoreResult:
    """Score a LLaVA answers file on VQAv2 val with the official VQA accuracy."""
    annotations = load_vqa_annotations(annotations_path)
    by_id, num_lines, duplicates = answers_by_question(answers_path, annotations, annotations_path)

    scores: dict[QuestionId, float] = {}
    per_answer_type: dict[str, list[float]] = {}
    per_question_type: dict[str, list[float]] = {}
    missing = []
    # vqaEval iterates the annotation's question ids; disable=None: a bar only on a terminal
    for qid, ann in tqdm(annotations.items(), desc="vqav2", unit="question", disable=None):
        if qid not in by_id:
            missing.append(qid)
            continue
        acc = vqa_accuracy(by_id[qid].text, ann["answers"])
        scores[qid] = acc
        per_answer_type.setdefault(ann["answer_type"], []).append(acc)
        per_question_type.setdefault(ann["question_type"], []).append(acc)

    metrics: dict[str, Any] = {
        "benchmark": "vqav2",
        "accuracy": _mean_percent(list(scores.values())) if scores else None,
        "per_answer_type": {k: _mean_percent(v) for k, v in per_answer_type.items()},
        "per_question_type": {k: _mean_percent(v) for k, v in per_question_type.items()},
        **coverage_metrics(len(annotations), num_lines, duplicates, missing, answers_path),
    }
    per_question = [
        {"question_id": a.question_id, "prediction": a.text, "score": scores[a.question_id]}
        for a in by_id.values()
    ] + [missing_record(qid) for qid in missing]
    return ScoreResult(metrics, per_question)


def load_question_list(path: str | Path) -> list[QuestionId]:
    """Question ids, in order, from official questions JSON ({'questions': [...]}) or a LLaVA question JSONL."""
    path = Path(path)
    try:
        data = read_json(path)
    except EvalInputError:
        data = None  # not one JSON document: read it as JSON lines below
    if isinstance(data, dict) and isinstance(data.get("questions"), list):
        rows = [(f"{path}: questions[{i}]", q) for i, q in enumerate(data["questions"])]
    elif data is None or isinstance(data, dict):
        rows = [(f"{path}:{n}", q) for n, q in read_jsonl(path)]
    else:
        raise EvalInputError(f"{path}: expected official VQA questions JSON or a LLaVA question JSONL")
    ids = []
    for where, row in rows:
        if not isinstance(row, dict) or "question_id" not in row:
            raise EvalInputError(f"{where}: each question needs a question_id")
        ids.append(check_question_id(row["question_id"], where))
    return ids


def build_submission(
    answers_path: str | Path, questions_path: str | Path
) -> tuple[list[dict[str, Any]], dict]:
    """The EvalAI upload list `[{question_id, answer}]` for every question of `questions_path`, and coverage."""
    question_ids = load_question_list(questions_path)
    by_id, num_lines, duplicates = answers_by_question(answers_path, set(question_ids), questions_path)
    upload, missing = [], []
    for qid in question_ids:
        if qid in by_id:
            upload.append({"question_id": qid, "answer": llava_answer_processor(by_id[qid].text)})
        else:
            missing.append(qid)
            upload.append({"question_id": qid, "answer": ""})  # EvalAI needs every test2015 question
    return upload, coverage_metrics(len(question_ids), num_lines, duplicates, missing, answers_path)
