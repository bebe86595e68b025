"""VQAv2: official per-question accuracy (gate, leave-one-out, dict quirk), aggregates, files, EvalAI upload.

Expected values are hand-worked from eval_metrics.md (a) and (e); the per-question floats are checked for
bit-equality with the official expression `float(sum(gtAcc)) / len(gtAcc)` written out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava_patch.eval.io import EvalInputError, write_jsonl
from llava_patch.eval.vqa import build_submission, py2_round, score_vqav2, vqa_accuracy

THIRD = 1.0 / 3


def human(*answers: str, with_ids: bool = True, confidence: str = "yes") -> list[dict]:
    return [
        {"answer": a, "answer_confidence": confidence, **({"answer_id": i + 1} if with_ids else {})}
        for i, a in enumerate(answers)
    ]


@pytest.mark.parametrize(
    ("prediction", "answers", "expected", "rule"),
    [
        ("yes", ["yes"] * 10, 1.0, "4+ matches among the other nine -> 1"),
        ("Yes", ["yes"] * 10, 0.0, "unanimity gate: 10 identical answers -> raw, case-sensitive comparison"),
        ("yes.", ["yes"] * 10, 0.0, "unanimity gate: no period stripping"),
        ("two", ["2"] * 10, 0.0, "unanimity gate: no number mapping"),
        ("the dog", ["dog"] * 10, 0.0, "unanimity gate: no article removal"),
        (" yes\n", ["yes"] * 10, 1.0, "strip (and \\n -> space) happens before the gate"),
        ("Yes", ["yes"] * 9 + ["Yes"], 1.0, "answers not all identical -> everything normalised"),
        ("yes", ["yes "] + ["yes"] * 9, 1.0, "the gate looks at stripped answers: still unanimous"),
        ("2", ["two"] * 5 + ["2"] * 5, 1.0, "normalised human answers match each other"),
        ("the", ["the"] * 3 + ["dog"] * 7, 0.9, "'the' normalises to '' and matches 3 empty answers"),
        ("", [""] * 3 + ["dog"] * 7, 0.9, "an empty prediction matches empty human answers"),
    ],
)
def test_vqa_accuracy_rules(prediction: str, answers: list[str], expected: float, rule: str) -> None:
    assert vqa_accuracy(prediction, human(*answers)) == pytest.approx(expected, abs=1e-12), rule


@pytest.mark.parametrize("matches", range(6))
def test_leave_one_out_min_matches_over_three(matches: int) -> None:
    # official: for each of the 10 answers left out, min(1, matches among the other 9 / 3), then the mean
    answers = ["cat"] * matches + ["dog"] * (10 - matches) if matches < 10 else ["cat"] * 10
    per_left_out = [min(1, float(matches - (a == "cat")) / 3) for a in answers]
    expected = float(sum(per_left_out)) / len(per_left_out)
    got = vqa_accuracy("cat", human(*answers))
    assert got == expected  # bit-identical, same expression and summation order
    assert got == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.0, 1.0][matches], abs=1e-12)


def test_position_of_matches_sets_the_float_bits() -> None:
    # the sum runs in answer order: 2 matches first or last give sums that may differ in the last bit;
    # we must follow the same order as vqaEval.py, whatever the bits are
    answers = ["dog"] * 8 + ["cat"] * 2
    expected = float(sum([2 * THIRD] * 8 + [THIRD] * 2)) / 10
    assert vqa_accuracy("cat", human(*answers)) == expected


def test_dict_inequality_quirk_without_answer_id() -> None:
    # `others = [x for x in answers if x != g]` compares whole records: without answer_id, equal records all
    # drop out together (eval_metrics.md quirk_cases_without_answer_id)
    assert vqa_accuracy("yes", human(*["yes"] * 10, with_ids=False)) == 0.0
    records = human(*["yes"] * 8, with_ids=False) + human(*["yes"] * 2, with_ids=False, confidence="maybe")
    # 8 'yes/yes' records: others are the 2 'maybe' ones -> 2/3; 2 'maybe' records: others are 8 -> 1
    expected = float(sum([2 * THIRD] * 8 + [1] * 2)) / 10
    assert vqa_accuracy("yes", records) == expected


def test_human_answer_records_are_not_mutated() -> None:
    answers = human("Two", "2", "two ", "dog")
    vqa_accuracy("2", answers)
    assert [a["answer"] for a in answers] == ["Two", "2", "two ", "dog"]


def test_py2_round_rounds_ties_away_from_zero() -> None:
    # vqaEval.py runs on Python 2.7, whose round() sends exact halves away from zero (Python 3: to even)
    assert py2_round(3.125) == 3.13 and round(3.125, 2) == 3.12
    assert py2_round(0.625) == 0.63
    assert py2_round(2.675) == 2.67  # the double is below the half: both Pythons agree
    assert py2_round(43.333333333333336) == 43.33


def write_vqa(
    tmp_path: Path, questions: list[tuple[int, str, list[str]]], answers: list[dict]
) -> tuple[Path, Path]:
    """questions: (question_id, answer_type, human answers); answers: LLaVA answer lines."""
    annotations = {
        "annotations": [
            {
                "question_id": qid,
                "image_id": 1,
                "answer_type": atype,
                "question_type": "what is",
                "answers": human(*ans),
            }
            for qid, atype, ans in questions
        ]
    }
    ann_path, ans_path = tmp_path / "annotations.json", tmp_path / "answers.jsonl"
    ann_path.write_text(json.dumps(annotations))
    write_jsonl(ans_path, answers)
    return ann_path, ans_path


def line(qid, text: str) -> dict:
    return {
        "question_id": qid,
        "prompt": "q",
        "text": text,
        "answer_id": "x",
        "model_id": "m",
        "metadata": {},
    }


def test_score_vqav2_aggregates_and_per_question(tmp_path: Path) -> None:
    questions = [
        (1, "yes/no", ["yes"] * 10),
        (2, "number", ["2"] * 9 + ["3"]),
        (3, "other", ["red"] * 7 + ["blue"] * 3),
    ]
    ann, ans = write_vqa(tmp_path, questions, [line(1, "yes"), line(2, "3"), line(3, "Blue.")])
    result = score_vqav2(ans, ann)
    m = result.metrics
    # per question 1.0, 0.3, 0.9 -> overall round(100 * 2.2 / 3, 2)
    assert m["accuracy"] == 73.33
    assert m["per_answer_type"] == {"yes/no": 100.0, "number": 30.0, "other": 90.0}
    assert m["per_question_type"] == {"what is": 73.33}
    assert (m["num_questions"], m["num_answered"], m["num_missing"]) == (3, 3, 0)
    scores = {r["question_id"]: r["score"] for r in result.per_question}
    assert scores == pytest.approx({1: 1.0, 2: 0.3, 3: 0.9}, abs=1e-12)
    assert [r["prediction"] for r in result.per_question] == ["yes", "3", "Blue."]


def test_score_vqav2_rounds_the_mean_of_unrounded_scores_like_python2(tmp_path: Path) -> None:
    # 32 questions, one right: 100 * 1 / 32 = 3.125 exactly -> 3.13 (Python 2), not 3.12 (Python 3)
    questions = [(q, "other", ["cat"] * 10) for q in range(32)]
    ann, ans = write_vqa(tmp_path, questions, [line(q, "cat" if q == 0 else "dog") for q in range(32)])
    assert score_vqav2(ans, ann).metrics["accuracy"] == 3.13


def test_missing_answers_are_counted_not_scored(tmp_path: Path, capsys) -> None:
    questions = [(1, "other", ["cat"] * 10), (2, "other", ["dog"] * 10)]
    ann, ans = write_vqa(tmp_path, questions, [line(1, "cat")])
    result = score_vqav2(ans, ann)
    assert result.metrics["accuracy"] == 100.0  # over the answered question only
    assert result.metrics["num_missing"] == 1 and result.metrics["missing_question_ids"] == [2]
    assert result.per_question[-1] == {"question_id": 2, "prediction": None, "score": None, "missing": True}
    assert "1 of 2 questions have no answer" in capsys.readouterr().err


def test_repeated_question_keeps_last_line(tmp_path: Path) -> None:
    # vqa.py loadRes indexes results by question id: the last entry wins
    ann, ans = write_vqa(tmp_path, [(1, "other", ["cat"] * 10)], [line(1, "cat"), line(1, "dog")])
    result = score_vqav2(ans, ann)
    assert result.metrics["accuracy"] == 0.0 and result.metrics["num_duplicate_answers"] == 1


def test_unknown_question_id_names_file_and_line(tmp_path: Path) -> None:
    # an answer the annotations do not know (official: loadRes assertion) -> error with file:line
    ann, ans = write_vqa(tmp_path, [(1, "other", ["cat"] * 10)], [line(1, "cat"), line("20000000", "cat")])
    with pytest.raises(
        EvalInputError, match=r"answers.jsonl:2: question_id '20000000' is not in .*another benchmark"
    ):
        score_vqav2(ans, ann)


def test_submission_processes_answers_as_llava_and_fills_every_question(tmp_path: Path) -> None:
    questions = tmp_path / "llava_vqav2_mscoco_test2015.jsonl"
    questions.write_text("".join(json.dumps({"question_id": q, "text": "?"}) + "\n" for q in (5, 3, 9, 7)))
    answers = tmp_path / "merge.jsonl"
    answers.write_text(
        "".join(
            json.dumps(line(q, t)) + "\n" for q, t in [(3, "Two"), (5, "man's"), (7, "x"), (7, "Red,White")]
        )
    )
    upload, coverage = build_submission(answers, questions)
    # question order of the question file; EvalAIAnswerProcessor on each answer; "" where none; last line wins
    assert upload == [
        {"question_id": 5, "answer": "man 's"},
        {"question_id": 3, "answer": "2"},
        {"question_id": 9, "answer": ""},
        {"question_id": 7, "answer": "redwhite"},
    ]
    assert coverage["num_missing"] == 1 and coverage["num_duplicate_answers"] == 1


def test_submission_reads_official_questions_json(tmp_path: Path) -> None:
    questions = tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json"
    questions.write_text(json.dumps({"questions": [{"question_id": 2, "image_id": 1, "question": "?"}]}))
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps(line(2, "The Dog.")) + "\n")
    assert build_submission(answers, questions)[0] == [{"question_id": 2, "answer": "dog"}]


def test_upload_scored_officially_rescues_gate_cases_and_breaks_possessives(tmp_path: Path) -> None:
    # eval_metrics.md (e): LLaVA's pre-processing under official scoring. The upload (a results array of
    # {question_id, answer}) is read back by the val scorer, as the EvalAI server would score it.
    cases = [(1, "Yes", ["yes"] * 10, 1.0), (2, "two", ["2"] * 10, 1.0), (3, "the dog", ["dog"] * 10, 1.0)]
    cases += [(4, "man's", ["man's"] * 10, 0.0), (5, "red,white", ["red white"] * 9 + ["white"], 0.0)]
    ann, ans = write_vqa(
        tmp_path, [(q, "other", gt) for q, _, gt, _ in cases], [line(q, t) for q, t, _, _ in cases]
    )
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question_id": q}) + "\n" for q, *_ in cases))
    upload, _ = build_submission(ans, questions)
    assert [u["answer"] for u in upload] == ["yes", "2", "dog", "man 's", "redwhite"]
    uploaded = tmp_path / "upload.json"
    uploaded.write_text(json.dumps(upload))
    raw = {r["question_id"]: r["score"] for r in score_vqav2(ans, ann).per_question}
    processed = {r["question_id"]: r["score"] for r in score_vqav2(uploaded, ann).per_question}
    assert raw == {1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0, 5: 1.0}  # official on the raw text: the gate bites
    assert processed == {q: expected for q, _, _, expected in cases}
