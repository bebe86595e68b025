"""POPE, scored as LLaVA-1.5's llava/eval/eval_pope.py does, but paired by question id.

Parsing free text into yes/no (`parse_yes_no`, same as AoiDragon/POPE evaluate.py): keep what precedes the
first '.', delete every ',', split on the space character only; "no" if one of the words is exactly 'No',
'not' or 'no', else "yes". So "" / "NO" / "No!" / "Nope" / "Not sure" / "No\\n" -> yes, "No," / "not sure" /
"There is no cat" -> no, and "Yes. There is no cat." -> yes (first sentence only).

Labels: each coco_pope_<category>.json line (JSON lines despite the name) has `label`; 'no' -> no, anything
else -> yes. Per category, with yes as the positive class: precision = TP/(TP+FP), recall = TP/(TP+FN),
f1 = 2PR/(P+R), accuracy = (TP+TN)/N, yes_ratio = predicted yes / N (all in 0..1, computed with LLaVA's
expressions). A zero denominator, where LLaVA raises ZeroDivisionError, gives None. `mean_f1` averages f1 over
the categories: the number the LLaVA-1.5 paper reports (LLaVA issues #626, #806).

Where this differs from LLaVA: eval_pope.py zips the category's answers *in answer-file order* with the label
file's lines, so a reordered or incomplete answers file silently pairs answers with the wrong labels (and zip
truncates). Here each answer is joined to its question by question id, and the question to its label:
by question id when the label file's ids are exactly that category's question ids, else by position within the
category (LLaVA's llava_pope_test.jsonl lists each category's questions in label-file order); where both files
name the image, a label paired with a question on another image is an error. The two agree
whenever the answers file is complete and in question order, as LLaVA's merged chunks are. A label file whose
length differs from its category's question count is an error (the classic cause: POPE's newer 3000-line
coco_pope_random.json; LLaVA-1.5 used POPE commit e3e39262, 2910 random questions). A repeated question id
keeps its last answer (LLaVA would count both lines).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava_patch.eval.io import (
    EvalInputError,
    QuestionId,
    ScoreResult,
    answers_by_question,
    check_question_id,
    coverage_metrics,
    missing_record,
    read_jsonl,
)

LABEL_PREFIX, LABEL_SUFFIX = "coco_pope_", ".json"  # eval_pope.py: category = file[10:-5]


def parse_yes_no(text: str) -> str:
    """LLaVA / POPE free-text parsing: 'no' if the first sentence has the word No, not or no; else 'yes'."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def pope_metrics(predictions: list[str], labels: list[str]) -> dict[str, Any]:
    """Confusion counts and LLaVA's metrics for paired yes/no predictions and labels ('no' or anything else)."""
    tp = fp = tn = fn = 0
    for pred, label in zip(predictions, labels, strict=True):
        positive_label = label != "no"
        if pred == "yes":
            tp, fp = tp + positive_label, fp + (not positive_label)
        else:
            fn, tn = fn + positive_label, tn + (not positive_label)
    precision = float(tp) / float(tp + fp) if tp + fp else None
    recall = float(tp) / float(tp + fn) if tp + fn else None
    f1 = None
    if precision is not None and recall is not None and precision + recall:
        f1 = 2 * precision * recall / (precision + recall)
    total = tp + tn + fp + fn
    return {
        "accuracy": (tp + tn) / total if total else None,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": predictions.count("yes") / len(predictions) if predictions else None,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "num_answered": total,
    }


@dataclass(frozen=True)
class PopeItem:
    """A question of llava_pope_test.jsonl, or a line of a coco_pope_<category>.json label file."""

    question_id: QuestionId | None  # label files' ids restart per category; may be absent
    image: str | None  # COCO file name, used to check the pairing
    value: str  # the category (question file) or the label (label file)
    where: str  # "file:line"


def load_pope_questions(path: str | Path) -> list[PopeItem]:
    """llava_pope_test.jsonl in file order (value = category); question ids must be unique."""
    questions, seen = [], set()
    for number, row in read_jsonl(path):
        where = f"{path}:{number}"
        if not isinstance(row, dict) or "question_id" not in row or not isinstance(row.get("category"), str):
            raise EvalInputError(
                f"{where}: each POPE question needs question_id and category (llava_pope_test.jsonl)"
            )
        qid = check_question_id(row["question_id"], where)
        if qid in seen:
            raise EvalInputError(f"{where}: question_id {qid!r} appears twice")
        seen.add(qid)
        questions.append(PopeItem(qid, row.get("image"), row["category"], where))
    return questions


def load_pope_labels(folder: str | Path) -> dict[str, list[PopeItem]]:
    """{category: label lines (value = label)} from the coco_pope_<category>.json files of `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalInputError(
            f"{folder}: --annotations for pope must be the folder holding coco_pope_<category>.json"
        )
    labels = {}
    for path in sorted(folder.iterdir()):
        if not (path.name.startswith(LABEL_PREFIX) and path.name.endswith(LABEL_SUFFIX)):
            continue
        rows = []
        for number, row in read_jsonl(path):
            where = f"{path}:{number}"
            if not isinstance(row, dict) or not isinstance(row.get("label"), str):
                raise EvalInputError(f"{where}: each line needs a string 'label' (yes/no)")
            qid = row.get("question_id")
            qid = check_question_id(qid, where) if qid is not None else None
            rows.append(PopeItem(qid, row.get("image"), row["label"], where))
        labels[path.name[len(LABEL_PREFIX) : -len(LABEL_SUFFIX)]] = rows
    if not labels:
        raise EvalInputError(f"{folder}: no coco_pope_<category>.json label files found")
    return labels


def pair_labels(labels: list[PopeItem], questions: list[PopeItem], labels_path: Path) -> list[PopeItem]:
    """The label line of each of a category's questions: by id when the label file's ids are exactly the
    questions' ids, else by position. A label whose image differs from its question's is an error."""
    if len(labels) != len(questions):
        raise EvalInputError(
            f"{labels_path}: {len(labels)} labels but {len(questions)} questions of this category in the "
            "question file; LLaVA-1.5 uses POPE at commit e3e39262 (3000 adversarial, 3000 popular, 2910 random)"
        )
    label_ids = [label.question_id for label in labels]
    if set(label_ids) == {q.question_id for q in questions} and len(set(label_ids)) == len(label_ids):
        by_id = {label.question_id: label for label in labels}
        paired = [by_id[q.question_id] for q in questions]
    else:
        paired = list(labels)
    for question, label in zip(questions, paired):
        if question.image is not None and label.image is not None and question.image != label.image:
            raise EvalInputError(
                f"{label.where}: label for image {label.image} paired with question {question.question_id!r} on "
                f"image {question.image} ({question.where}): the label file and the question file disagree"
            )
    return paired


def score_pope(
    answers_path: str | Path, annotations_path: str | Path, questions_path: str | Path
) -> ScoreResult:
    """Score a LLaVA POPE answers file per category (`--annotations` folder, `--questions` llava_pope_test.jsonl)."""
    questions = load_pope_questions(questions_path)
    labels = load_pope_labels(annotations_path)
    known = {q.question_id for q in questions}
    by_id, num_lines, duplicates = answers_by_question(answers_path, known, questions_path)

    per_category, per_question, missing = {}, [], []
    for category, category_labels in labels.items():
        category_questions = [q for q in questions if q.value == category]
        labels_path = Path(annotations_path) / f"{LABEL_PREFIX}{category}{LABEL_SUFFIX}"
        predictions, paired_labels = [], []
        for question, label in zip(
            category_questions, pair_labels(category_labels, category_questions, labels_path)
        ):
            qid = question.question_id
            if qid not in by_id:
                missing.append(qid)
                per_question.append(missing_record(qid, category=category, label=label.value))
                continue
            prediction = parse_yes_no(by_id[qid].text)
            predictions.append(prediction)
            paired_labels.append(label.value)
            correct = prediction == ("no" if label.value == "no" else "yes")
            per_question.append(
                {
                    "question_id": qid,
                    "prediction": prediction,
                    "score": float(correct),
                    "category": category,
                    "label": label.value,
                }
            )
        per_category[category] = {
            **pope_metrics(predictions, paired_labels),
            "num_questions": len(category_questions),
        }

    f1s = [m["f1"] for m in per_category.values()]
    unscored = sorted({q.value for q in questions} - set(labels))
    metrics = {
        "benchmark": "pope",
        "mean_f1": sum(f1s) / len(f1s) if None not in f1s else None,
        "per_category": per_category,
        **coverage_metrics(
            sum(m["num_questions"] for m in per_category.values()),
            num_lines,
            duplicates,
            missing,
            answers_path,
        ),
        "categories_without_labels": unscored,
    }
    return ScoreResult(metrics, per_question)
