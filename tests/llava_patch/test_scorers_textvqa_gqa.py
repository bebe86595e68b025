"""TextVQA (LLaVA's matching and soft accuracy) and GQA (LLaVA's conversion + official eval.py), hand-worked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava_patch.cli import main
from llava_patch.eval.gqa import convert_prediction, score_gqa
from llava_patch.eval.io import EvalInputError, write_jsonl
from llava_patch.eval.textvqa import prompt_without_ocr, question_from_prompt, score_textvqa, textvqa_accuracy

SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.mark.parametrize(
    ("prompt", "expected", "rule"),
    [
        (
            "What Is It?\nReference OCR token: a, b" + SUFFIX,
            "what is it?",
            "3 lines with OCR line: line 1, lower-cased",
        ),
        (
            "Reference OCR token: a\nWhat Is It?" + SUFFIX,
            "what is it?",
            "prompt starting with the OCR line: line 2",
        ),
        ("What Is It?" + SUFFIX, "what is it?", "2 lines (no OCR tokens): line 1"),
        (
            "OCR tokens: a\nQuestion: What\nIs It? Short answer:",
            "what\nis it?",
            "OCR-tokens style: regex, DOTALL",
        ),
        ("What?\nReference OCR token: a\nb" + SUFFIX, None, "OCR tokens containing a newline: LLaVA asserts"),
        ("What?", None, "one line: LLaVA asserts"),
    ],
)
def test_question_from_prompt(prompt: str, expected: str | None, rule: str) -> None:
    assert question_from_prompt(prompt) == expected, rule


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("what brand is it?\nReference OCR token: Nike, 23" + SUFFIX, "What brand is it?" + SUFFIX),
        (
            "what does the SIGN say?" + SUFFIX,
            "What does the sign say?" + SUFFIX,
        ),  # str.capitalize, as lmms-eval
        ("Reference OCR token: a\nWhat?" + SUFFIX, None),  # not LLaVA's layout
        ("What?\nReference OCR token: a\nb" + SUFFIX, None),
        ("What?", None),
    ],
)
def test_prompt_without_ocr_is_lmms_evals(text: str, expected: str | None) -> None:
    assert prompt_without_ocr(text) == expected
    if expected is not None:  # the scorer finds the same question in both prompts
        assert question_from_prompt(expected) == question_from_prompt(text)


def test_textvqa_both_prompt_conventions_score_and_say_which(tmp_path: Path, capsys) -> None:
    entries = [
        {"question_id": 1, "image_id": "a", "question": "what brand?", "answers": ["nike"] * 10},
        {"question_id": 2, "image_id": "b", "question": "what number?", "answers": ["23"] * 7 + ["22"] * 3},
    ]
    questions = [  # LLaVA-1.5's file: the OCR line only where the image has OCR tokens
        {"question_id": "a", "image": "a.jpg", "text": "what brand?\nReference OCR token: Nike" + SUFFIX},
        {"question_id": "b", "image": "b.jpg", "text": "what number?" + SUFFIX},
    ]
    write_jsonl(tmp_path / "ocr.jsonl", questions)
    assert main(["textvqa-no-ocr", str(tmp_path / "ocr.jsonl"), str(tmp_path / "no_ocr.jsonl")]) == 0
    without = [json.loads(line) for line in (tmp_path / "no_ocr.jsonl").read_text().splitlines()]
    assert [q["text"] for q in without] == ["What brand?" + SUFFIX, "What number?" + SUFFIX]
    assert [(q["question_id"], q["image"]) for q in without] == [("a", "a.jpg"), ("b", "b.jpg")]
    (tmp_path / "ann.json").write_text(json.dumps({"data": entries}))
    for name, rows in (("ocr", questions), ("no_ocr", without)):
        answers = [
            {"question_id": q["question_id"], "prompt": q["text"], "text": t}
            for q, t in zip(rows, ["Nike", "22"])
        ]
        write_jsonl(tmp_path / f"{name}_answers.jsonl", answers)
        argv = ["score", "--benchmark", "textvqa", "--answers", str(tmp_path / f"{name}_answers.jsonl")]
        assert (
            main(
                argv + ["--annotations", str(tmp_path / "ann.json"), "--out", str(tmp_path / f"{name}.json")]
            )
            == 0
        )
    with_ocr, no_ocr = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("ocr", "no_ocr"))
    assert with_ocr["accuracy"] == no_ocr["accuracy"] == pytest.approx(100 * (1 + 0.9) / 2)
    assert (with_ocr["prompt_style"], with_ocr["num_prompts_with_ocr_tokens"]) == ("with_ocr_tokens", 1)
    assert (no_ocr["prompt_style"], no_ocr["num_prompts_with_ocr_tokens"]) == ("without_ocr_tokens", 0)
    write_jsonl(
        tmp_path / "bad.jsonl", [questions[0], {"question_id": "c", "image": "c.jpg", "text": "What?"}]
    )
    with pytest.raises(EvalInputError, match=r"bad.jsonl:2: not a LLaVA TextVQA question"):
        main(["textvqa-no-ocr", str(tmp_path / "bad.jsonl"), str(tmp_path / "x.jsonl")])


def test_textvqa_accuracy_always_processes_both_sides() -> None:
    # no unanimity gate in m4c: "Coca-Cola" vs 10 x "coca cola" matches after processing ('-' -> space)
    assert textvqa_accuracy("Coca-Cola", ["coca cola"] * 10) == 1.0
    # "man's" -> "man 's" on both sides, so possessives still match
    assert textvqa_accuracy("man's", ["man's"] * 2 + ["dog"] * 8) == pytest.approx(0.6, abs=1e-12)
    # float sum/len: 2 matches gives 0.6000000000000001, exactly as LLaVA computes it
    assert textvqa_accuracy("stop", ["stop"] * 2 + ["go"] * 8) == sum([1 / 3] * 2 + [2 / 3] * 8) / 10
    assert textvqa_accuracy("nothing", ["stop"] * 10) == 0.0


def write_textvqa(tmp_path: Path, entries: list[dict], answers: list[dict]) -> tuple[Path, Path]:
    ann, ans = tmp_path / "TextVQA_0.5.1_val.json", tmp_path / "answers.jsonl"
    ann.write_text(json.dumps({"data": entries}))
    write_jsonl(ans, answers)
    return ann, ans


def test_score_textvqa_matches_by_image_and_question(tmp_path: Path) -> None:
    entries = [
        {"question_id": 10, "image_id": "img1", "question": "What brand?", "answers": ["Nike"] * 10},
        {"question_id": 11, "image_id": "img1", "question": "What color?", "answers": ["red"] * 10},
        {"question_id": 12, "image_id": "img2", "question": "What brand?", "answers": ["Puma"] * 10},
    ]
    answers = [  # question_id holds the image id; the question comes from the prompt (with or without OCR line)
        {"question_id": "img2", "prompt": "what brand?\nReference OCR token: puma" + SUFFIX, "text": "puma"},
        {"question_id": "img1", "prompt": "What Brand?" + SUFFIX, "text": "Adidas"},
    ]
    ann, ans = write_textvqa(tmp_path, entries, answers)
    result = score_textvqa(ans, ann)
    assert result.metrics["accuracy"] == 50.0  # every answer line counts; unmatched annotations do not
    assert result.metrics["num_missing"] == 1 and result.metrics["missing_question_ids"] == [11]
    assert [(r["question_id"], r["score"], r["textvqa_question_id"]) for r in result.per_question[:2]] == [
        ("img2", 1.0, 12),
        ("img1", 0.0, 10),
    ]


def test_textvqa_duplicate_annotation_key_keeps_last(tmp_path: Path) -> None:
    # annotations dict keyed by (image_id, question.lower()): a repeated key keeps the last entry
    entries = [
        {"question_id": 1, "image_id": "i", "question": "What?", "answers": ["a"] * 10},
        {"question_id": 2, "image_id": "i", "question": "what?", "answers": ["b"] * 10},
    ]
    ann, ans = write_textvqa(
        tmp_path, entries, [{"question_id": "i", "prompt": "what?" + SUFFIX, "text": "b"}]
    )
    assert score_textvqa(ans, ann).metrics["accuracy"] == 100.0


def test_textvqa_errors_name_the_line(tmp_path: Path) -> None:
    entries = [{"question_id": 1, "image_id": "i", "question": "What?", "answers": ["a"] * 10}]
    ann, ans = write_textvqa(
        tmp_path, entries, [{"question_id": "i", "prompt": "What?" + SUFFIX, "text": "a"}] * 2
    )
    ans.write_text(ans.read_text() + json.dumps({"question_id": "i", "prompt": "What?", "text": "a"}) + "\n")
    with pytest.raises(EvalInputError, match=r"answers.jsonl:3: cannot find the question"):
        score_textvqa(ans, ann)
    ans.write_text(json.dumps({"question_id": "other", "prompt": "What?" + SUFFIX, "text": "a"}) + "\n")
    with pytest.raises(EvalInputError, match=r"answers.jsonl:1: no annotation .* image id 'other'"):
        score_textvqa(ans, ann)
    # m4c asserts 10 answers only for annotations a result is scored against
    unmatched = {"question_id": 2, "image_id": "j", "question": "Who?", "answers": ["b"] * 9}
    ann.write_text(json.dumps({"data": [entries[0], unmatched]}))
    ans.write_text(json.dumps({"question_id": "i", "prompt": "What?" + SUFFIX, "text": "a"}) + "\n")
    assert score_textvqa(ans, ann).metrics["accuracy"] == 100.0
    ans.write_text(json.dumps({"question_id": "j", "prompt": "Who?" + SUFFIX, "text": "b"}) + "\n")
    with pytest.raises(EvalInputError, match=r"answers.jsonl:1\) has 9 answers.*exactly 10"):
        score_textvqa(ans, ann)


@pytest.mark.parametrize(
    ("text", "expected", "rule"),
    [
        ("Yes.", "yes", "trailing period stripped, lower-cased"),
        ("yes..", "yes", "all trailing periods stripped"),
        (" no", " no", "no whitespace strip"),
        ("The left", "the left", "no article removal"),
        ("right!", "right!", "no punctuation removal"),
        ("a.m.", "a.m", "only trailing periods"),
    ],
)
def test_gqa_conversion(text: str, expected: str, rule: str) -> None:
    assert convert_prediction(text) == expected, rule


def gqa_question(
    answer: str, structural: str, group: str | None, semantic_type: str = "attr", n_words: int = 3
) -> dict:
    return {
        "question": " ".join(["w"] * n_words),
        "answer": answer,
        "isBalanced": True,
        "types": {"structural": structural, "semantic": semantic_type, "detailed": "x"},
        "groups": {"global": group, "local": "l"},
        "semantic": [
            {"operation": "select", "argument": "dog", "dependencies": []},
            {"operation": "exist", "argument": "?", "dependencies": [0]},
        ],
    }


def test_score_gqa(tmp_path: Path) -> None:
    questions = {
        "1": gqa_question("yes", "verify", "g1"),
        "2": gqa_question("yes", "verify", "g1"),
        "3": gqa_question("no", "logical", "g1"),
        "4": gqa_question("left", "query", None, semantic_type="rel", n_words=5),
        "5": gqa_question("red", "query", "g2"),
        "6": dict(gqa_question("red", "query", "g2"), isBalanced=False),
    }
    answers = [("1", "Yes."), ("2", "yes"), ("3", "yes"), ("4", "the left"), ("5", "red"), ("6", "blue")]
    ann, ans = tmp_path / "testdev_balanced_questions.json", tmp_path / "answers.jsonl"
    ann.write_text(json.dumps(questions))
    ans.write_text("".join(json.dumps({"question_id": q, "text": t}) + "\n" for q, t in answers))
    m = score_gqa(ans, ann).metrics
    assert m["accuracy"] == 3 / 5 * 100  # avg * 100, as eval.py; the unbalanced question is left out
    assert m["binary"] == 2 / 3 * 100 and m["open"] == 1 / 2 * 100  # open = structural 'query'
    assert m["per_structural_type"] == {"logical": 0.0, "query": 50.0, "verify": 100.0}
    assert m["per_semantic_type"] == {"attr": 75.0, "rel": 0.0}
    assert m["per_steps"] == {"1": 60.0}  # 'exist' operations do not count as a step
    assert m["per_length"] == {"3": 75.0, "5": 0.0}
    # chi-square: g1 gold yes:2 no:1, predicted yes:3 -> (3-2)^2/2 + (0-1)^2/1 = 1.5, weight 3;
    # g2 gold red:1, predicted red:1 -> 0, weight 1; (1.5*3 + 0) / 4 / 100
    assert m["distribution"] == pytest.approx(1.125 / 100, abs=1e-15)
    assert m["num_questions"] == 5 and m["num_missing"] == 0
    # LLaVA's converted testdev_balanced_predictions.json scores the same (the conversion is idempotent)
    converted = [{"questionId": q, "prediction": convert_prediction(t)} for q, t in answers]
    ans.write_text(json.dumps(converted))
    assert score_gqa(ans, ann).metrics == m


def test_gqa_int_ids_never_match_string_keys(tmp_path: Path) -> None:
    # eval.py keys are strings; an int question id would never match ("missing predictions")
    ann, ans = tmp_path / "q.json", tmp_path / "a.jsonl"
    ann.write_text(json.dumps({"201": gqa_question("yes", "verify", None)}))
    ans.write_text(json.dumps({"question_id": 201, "text": "yes"}) + "\n")
    with pytest.raises(EvalInputError, match=r"a.jsonl:1: question_id 201 is not in"):
        score_gqa(ans, ann)
