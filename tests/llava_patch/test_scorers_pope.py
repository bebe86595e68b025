"""POPE: LLaVA's yes/no parsing, per-category metrics, and pairing by question id (not answer-file order)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava_patch.eval.io import EvalInputError, write_jsonl
from llava_patch.eval.pope import parse_yes_no, pope_metrics, score_pope

# eval_metrics.md (d): first sentence only, commas deleted, split on ' ' only, then 'No' / 'not' / 'no' words
PARSE_YES = ["", "Yes", "NO", "No!", "Nope", "None", "Not", "No\n", "No\u3002", "\uff2e\uff4f", "I cannot tell",
             "There isn't a cat", "Yes\tno", "...No", "3.5 no", "Yes. There is no cat."]  # fmt: skip
PARSE_NO = ["No", "no", "No.", "No,", "No ", " No", "No\nThere is no dog.", "There is no cat", "not sure",
            "It is not clear", "yes no", "Answer: no", "Yes, but the dog is not visible."]  # fmt: skip


@pytest.mark.parametrize("text", PARSE_YES)
def test_parses_as_yes(text: str) -> None:
    assert parse_yes_no(text) == "yes"


@pytest.mark.parametrize("text", PARSE_NO)
def test_parses_as_no(text: str) -> None:
    assert parse_yes_no(text) == "no"


def test_metrics_match_the_reference_vector() -> None:
    # eval_metrics.md vector: adversarial TP3 FP6 TN5 FN2 -> F1 .429, acc .5
    preds = ["yes"] * 3 + ["yes"] * 6 + ["no"] * 5 + ["no"] * 2
    labels = ["yes"] * 3 + ["no"] * 6 + ["no"] * 5 + ["yes"] * 2
    m = pope_metrics(preds, labels)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 6, 5, 2)
    assert m["precision"] == 3 / 9 and m["recall"] == 3 / 5 and m["accuracy"] == 0.5
    assert m["f1"] == 2 * (3 / 9) * (3 / 5) / (3 / 9 + 3 / 5)
    assert f"{m['f1']:.3f}" == "0.429"
    assert m["yes_ratio"] == 9 / 16  # predicted yes over answers, not the ground-truth ratio


def test_label_other_than_no_counts_as_yes_and_zero_denominators_give_none() -> None:
    m = pope_metrics(["no", "no"], ["No", "no"])  # label 'No' != 'no' -> positive
    assert (m["tp"], m["fn"], m["tn"]) == (0, 1, 1)
    assert m["precision"] is None and m["f1"] is None  # LLaVA: ZeroDivisionError


def write_pope(tmp_path: Path, label_ids_offset: int = 0) -> tuple[Path, Path]:
    """Two categories of 4 questions; question ids unique across categories, as in llava_pope_test.jsonl."""
    folder = tmp_path / "coco"
    folder.mkdir()
    questions = []
    for c, category in enumerate(("adversarial", "random")):
        labels = ["yes", "no", "yes", "no"]
        rows = []
        for i, label in enumerate(labels):
            qid = 100 * c + i + 1
            questions.append(
                {"question_id": qid, "image": f"{i}.jpg", "text": "Is there a dog?", "category": category}
            )
            rows.append(
                {"question_id": i + 1 + label_ids_offset * c * 100, "image": f"{i}.jpg", "label": label}
            )
        write_jsonl(folder / f"coco_pope_{category}.json", rows)
    qfile = tmp_path / "llava_pope_test.jsonl"
    write_jsonl(qfile, questions)
    return folder, qfile


def answers_file(tmp_path: Path, answers: list[tuple[int, str]]) -> Path:
    path = tmp_path / "answers.jsonl"
    write_jsonl(path, [{"question_id": q, "text": t} for q, t in answers])
    return path


@pytest.mark.parametrize("label_ids_match_questions", [False, True])
def test_shuffled_answers_pair_by_question_id(tmp_path: Path, label_ids_match_questions: bool) -> None:
    # LLaVA zips answers in file order with labels: shuffling the answers file would change its numbers.
    # Pairing by id (label ids equal to question ids, or position within the category) does not.
    folder, qfile = write_pope(tmp_path, label_ids_offset=int(label_ids_match_questions))
    answers = [
        (1, "Yes"),
        (2, "No"),
        (3, "No."),
        (4, "no"),
        (101, "yes"),
        (102, "yes"),
        (103, "yes"),
        (104, "No"),
    ]
    in_order = score_pope(answers_file(tmp_path, answers), folder, qfile).metrics
    shuffled = score_pope(answers_file(tmp_path, answers[::-1]), folder, qfile).metrics
    assert in_order["per_category"] == shuffled["per_category"]
    adversarial = in_order["per_category"]["adversarial"]
    assert (adversarial["tp"], adversarial["fp"], adversarial["tn"], adversarial["fn"]) == (1, 0, 2, 1)
    random_ = in_order["per_category"]["random"]
    assert (random_["tp"], random_["fp"], random_["tn"], random_["fn"]) == (2, 1, 1, 0)
    assert in_order["mean_f1"] == (adversarial["f1"] + random_["f1"]) / 2


def test_per_question_output_and_missing(tmp_path: Path) -> None:
    folder, qfile = write_pope(tmp_path)
    result = score_pope(answers_file(tmp_path, [(1, "Yes, there is."), (2, "Yes")]), folder, qfile)
    rows = {r["question_id"]: r for r in result.per_question}
    assert rows[1]["prediction"] == "yes" and rows[1]["score"] == 1.0
    assert rows[2]["prediction"] == "yes" and rows[2]["score"] == 0.0
    assert rows[3]["missing"] and rows[3]["score"] is None
    assert result.metrics["num_missing"] == 6
    assert result.metrics["per_category"]["random"]["num_answered"] == 0


def test_label_count_mismatch_is_an_error(tmp_path: Path) -> None:
    # the newer 3000-line coco_pope_random.json against LLaVA's 2910 random questions misaligns every label
    folder, qfile = write_pope(tmp_path)
    with open(folder / "coco_pope_random.json", "a") as f:
        f.write(json.dumps({"question_id": 5, "label": "yes"}) + "\n")
    with pytest.raises(EvalInputError, match=r"coco_pope_random.json: 5 labels but 4 questions.*e3e39262"):
        score_pope(answers_file(tmp_path, [(1, "yes")]), folder, qfile)


def test_answer_for_unknown_question_names_the_line(tmp_path: Path) -> None:
    folder, qfile = write_pope(tmp_path)
    with pytest.raises(EvalInputError, match=r"answers.jsonl:2: question_id 999"):
        score_pope(answers_file(tmp_path, [(1, "yes"), (999, "yes")]), folder, qfile)


def test_label_on_another_image_is_an_error(tmp_path: Path) -> None:
    # pairing is checked where both files name the image: a reordered label file cannot pass silently
    folder, qfile = write_pope(tmp_path)
    path = folder / "coco_pope_random.json"
    rows = path.read_text().splitlines()
    path.write_text("\n".join([rows[1], rows[0], *rows[2:]]) + "\n")
    with pytest.raises(
        EvalInputError, match=r"coco_pope_random.json:1: label for image 1.jpg paired with question 101"
    ):
        score_pope(answers_file(tmp_path, [(1, "yes")]), folder, qfile)
