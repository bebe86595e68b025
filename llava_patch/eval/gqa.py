"""GQA, scored as LLaVA-1.5 does: scripts/convert_gqa_for_eval.py, then GQA's official eval.py (LLaVA-patched).

Conversion: prediction = text.rstrip('.').lower(). Only trailing periods go (all of them); there is no
whitespace strip, no article or punctuation removal ("the left", "right!", " no" stay wrong).

eval.py: for every question of testdev_balanced_questions.json with `isBalanced`, correct = (prediction ==
answer), exact and case-sensitive. `accuracy` (the number LLaVA reports), `binary` and `open` (open = structural
type "query", every other structural type is binary) are avg * 100 with avg = float(sum) / len, and 0 for an
empty list, as eval.py computes them. Also reported as eval.py computes them: accuracy per structural type, per
semantic type, per number of reasoning steps, per number of words, and the distribution score (chi-square of
predicted vs gold answer counts per global group, weighted by group size, / 100; None when no question has a
global group, where eval.py divides by zero). Validity and plausibility are left out: LLaVA's patched script
prints 0.00 for them because the testdev release has no choices file.

Question ids are strings in GQA; an answer whose id is not a key of the questions file (for example an int id)
is an error here, where eval.py would stop with "missing predictions". Questions without `isBalanced` are
outside every metric, as in eval.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llava_patch.eval.io import (
    EvalInputError,
    ScoreResult,
    answers_by_question,
    coverage_metrics,
    missing_record,
    read_json,
)

# eval.py getStepsNum: operations containing one of these do not add a reasoning step
_NON_STEP_OPERATIONS = ("exist", "query: name", "choose name")


def convert_prediction(text: str) -> str:
    """LLaVA's convert_gqa_for_eval.py: strip trailing periods, lower-case; nothing else."""
    return text.rstrip(".").lower()


def _avg_percent(values: list[float]) -> float:
    # eval.py: avg(l) = float(sum(l)) / len(l), 0 for an empty list; then * 100
    return (float(sum(values)) / len(values) if values else 0) * 100


def _num_steps(question: dict[str, Any]) -> int:
    return len(
        [
            op
            for op in question.get("semantic", [])
            if not any(o in "{}: {}".format(op["operation"], op["argument"]) for o in _NON_STEP_OPERATIONS)
        ]
    )


def _chi_square(gold: dict[Any, dict[str, int]], predicted: dict[Any, dict[str, int]]) -> float | None:
    """eval.py chiSquare: per group sum over gold answers of (o - e)^2 / e, weighted by group size."""
    sum_score, sum_overall = 0.0, 0
    for group, gold_counts in gold.items():
        score, overall = 0.0, 0
        for answer, expected in gold_counts.items():
            observed = predicted[group].get(answer, 0)
            score += float(observed - expected) ** 2 / expected
            overall += expected
        sum_score += score * overall
        sum_overall += overall
    return float(sum_score) / sum_overall if sum_overall else None


def load_gqa_questions(path: str | Path) -> dict[str, dict[str, Any]]:
    questions = read_json(path)
    if not isinstance(questions, dict):
        raise EvalInputError(
            f"{path}: expected GQA questions ({{question_id: question}}, testdev_balanced_questions.json)"
        )
    for qid, question in questions.items():
        if (
            not isinstance(question, dict)
            or not isinstance(question.get("answer"), str)
            or "isBalanced" not in question
            or not isinstance(question.get("types"), dict)
            or "structural" not in question["types"]
        ):
            raise EvalInputError(
                f"{path}: question {qid!r} needs 'answer', 'isBalanced' and 'types.structural'"
            )
    return questions


def score_gqa(answers_path: str | Path, annotations_path: str | Path) -> ScoreResult:
    """Score a LLaVA GQA answers file against testdev_balanced_questions.json."""
    questions = load_gqa_questions(annotations_path)
    by_id, num_lines, duplicates = answers_by_question(answers_path, questions, annotations_path)

    scores: dict[str, list[float]] = {"accuracy": [], "binary": [], "open": []}
    breakdowns: dict[str, dict[Any, list[float]]] = {
        "per_structural_type": {},
        "per_semantic_type": {},
        "per_steps": {},
        "per_length": {},
    }
    gold: dict[Any, dict[str, int]] = {}
    predicted: dict[Any, dict[str, int]] = {}
    per_question, missing, num_balanced = [], [], 0
    for qid, question in questions.items():  # eval.py loops over the questions file in its order
        if not question["isBalanced"]:
            continue
        num_balanced += 1
        if qid not in by_id:
            missing.append(qid)
            continue
        prediction = convert_prediction(by_id[qid].text)
        score = float(prediction == question["answer"])
        per_question.append({"question_id": qid, "prediction": prediction, "score": score})
        structural = question["types"]["structural"]
        scores["accuracy"].append(score)
        scores["open" if structural == "query" else "binary"].append(score)
        breakdowns["per_structural_type"].setdefault(structural, []).append(score)
        if "semantic" in question["types"]:
            breakdowns["per_semantic_type"].setdefault(question["types"]["semantic"], []).append(score)
        breakdowns["per_steps"].setdefault(_num_steps(question), []).append(score)
        if isinstance(question.get("question"), str):
            breakdowns["per_length"].setdefault(len(question["question"].split()), []).append(score)
        group = (question.get("groups") or {}).get("global")
        if group is not None:
            gold.setdefault(group, {}).setdefault(question["answer"], 0)
            gold[group][question["answer"]] += 1
            predicted.setdefault(group, {}).setdefault(prediction, 0)
            predicted[group][prediction] += 1

    chi_square = _chi_square(gold, predicted)
    metrics: dict[str, Any] = {
        "benchmark": "gqa",
        **{name: _avg_percent(values) for name, values in scores.items()},
        **{
            name: {str(key): _avg_percent(values) for key, values in sorted(table.items())}
            for name, table in breakdowns.items()
        },
        "distribution": None if chi_square is None else chi_square / 100,
        **coverage_metrics(num_balanced, num_lines, duplicates, missing, answers_path),
    }
    return ScoreResult(metrics, per_question + [missing_record(qid) for qid in missing])
