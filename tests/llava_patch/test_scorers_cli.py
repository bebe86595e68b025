"""`radio-llava score` / `radio-llava merge` end to end, and malformed inputs (errors name file and line)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llava_patch.cli import main
from llava_patch.eval.io import write_jsonl


def _write_jsonl(path: Path, rows: list) -> Path:
    write_jsonl(path, rows)
    return path


@pytest.fixture
def vqav2_files(tmp_path: Path) -> tuple[Path, Path]:
    annotations = {
        "annotations": [
            {
                "question_id": q,
                "image_id": 1,
                "answer_type": "other",
                "question_type": "what",
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(ans)
                ],
            }
            for q, ans in [(1, ["two"] * 9 + ["2"]), (2, ["cat"] * 10)]
        ]
    }
    ann = tmp_path / "v2_mscoco_val2014_annotations.json"
    ann.write_text(json.dumps(annotations))
    answers = _write_jsonl(
        tmp_path / "answers.jsonl", [{"question_id": 1, "text": "2"}, {"question_id": 2, "text": "Cat"}]
    )
    return ann, answers


def test_score_cli_writes_metrics_per_question_and_upload(tmp_path: Path, vqav2_files, capsys) -> None:
    ann, answers = vqav2_files
    questions = _write_jsonl(tmp_path / "test.jsonl", [{"question_id": q} for q in (1, 2, 3)])
    out, per_q, upload = tmp_path / "m.json", tmp_path / "pq.jsonl", tmp_path / "up.json"
    argv = ["score", "--benchmark", "vqav2", "--answers", str(answers), "--annotations", str(ann)]
    argv += ["--questions", str(questions), "--out", str(out), "--per-question-out", str(per_q)]
    assert main(argv + ["--submission-out", str(upload)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["accuracy"] == 50.0  # "Cat" vs 10 x "cat": the unanimity gate keeps it case-sensitive
    assert [json.loads(x) for x in per_q.read_text().splitlines()] == [
        {"question_id": 1, "prediction": "2", "score": 1.0},
        {"question_id": 2, "prediction": "Cat", "score": 0.0},
    ]
    # LLaVA's upload lower-cases first, so "Cat" is uploaded as "cat"; question 3 has no answer -> ""
    assert json.loads(upload.read_text()) == [
        {"question_id": 1, "answer": "2"},
        {"question_id": 2, "answer": "cat"},
        {"question_id": 3, "answer": ""},
    ]
    assert printed["submission"]["num_missing"] == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"question_id": 1, "text": "2"}\n{"question_id": 2, "te', r"answers.jsonl:2: not valid JSON"),
        ('{"question_id": 1, "text": "2"}\n{"text": "2"}\n', r"answers.jsonl:2: no question_id"),
        ('{"question_id": 1, "text": 2}\n', r"answers.jsonl:1: 'text' .* must be a string"),
        (
            '{"question_id": 1.5, "text": "2"}\n',
            r"answers.jsonl:1: question_id must be an integer or a string",
        ),
        ('"not an object"\n', r"answers.jsonl:1: expected a JSON object"),
        ('[{"question_id": 1, "answer": "2"}, 7]', r"answers.jsonl: \[1\]: expected a JSON object"),
        (
            '{"question_id": "n1234", "text": "yes"}\n',
            r"answers.jsonl:1: question_id 'n1234' is not in .*another benchmark",
        ),
    ],
)
def test_malformed_answers_name_file_and_line(
    tmp_path: Path, vqav2_files, capsys, content: str, message: str
) -> None:
    ann, answers = vqav2_files
    answers.write_text(content)
    assert main(["score", "--benchmark", "vqav2", "--answers", str(answers), "--annotations", str(ann)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_official_results_formats_are_read(tmp_path: Path, vqav2_files, capsys) -> None:
    # vqaEval.py results: one JSON list of {"question_id", "answer"}
    ann, answers = vqav2_files
    answers.write_text(json.dumps([{"question_id": 1, "answer": "2"}, {"question_id": 2, "answer": "cat"}]))
    assert main(["score", "--benchmark", "vqav2", "--answers", str(answers), "--annotations", str(ann)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 100.0


def test_flag_combinations_are_explained(tmp_path: Path, vqav2_files, capsys) -> None:
    ann, answers = vqav2_files
    assert (
        main(["score", "--benchmark", "pope", "--answers", str(answers), "--annotations", str(tmp_path)]) == 2
    )
    assert "needs --questions" in capsys.readouterr().err
    assert main(["score", "--benchmark", "gqa", "--answers", str(answers)]) == 2
    assert "needs --annotations" in capsys.readouterr().err
    assert (
        main(
            [
                "score",
                "--benchmark",
                "gqa",
                "--answers",
                str(answers),
                "--annotations",
                str(ann),
                "--submission-out",
                "x",
            ]
        )
        == 2
    )
    assert "only for --benchmark vqav2" in capsys.readouterr().err
    assert (
        main(["score", "--benchmark", "textvqa", "--answers", str(answers), "--annotations", str(ann)]) == 2
    )
    assert "expected the official TextVQA annotations" in capsys.readouterr().err


def test_merge_concatenates_chunks_in_order(tmp_path: Path) -> None:
    for k, ids in enumerate([[1, 2], [3], [4, 5]]):
        _write_jsonl(tmp_path / f"3_{k}.jsonl", [{"question_id": q, "text": str(q)} for q in ids])
    out = tmp_path / "merge.jsonl"
    assert main(["merge", "--answers-dir", str(tmp_path), "--num-chunks", "3", "--out", str(out)]) == 0
    assert [json.loads(x)["question_id"] for x in out.read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_merge_in_question_order_drops_repeats(tmp_path: Path, capsys) -> None:
    a = _write_jsonl(
        tmp_path / "a.jsonl", [{"question_id": 3, "text": "x"}, {"question_id": 1, "text": "old"}]
    )
    b = _write_jsonl(tmp_path / "b.jsonl", [{"question_id": 1, "text": "new"}])
    questions = _write_jsonl(tmp_path / "q.jsonl", [{"question_id": q} for q in (1, 2, 3)])
    out = tmp_path / "merge.jsonl"
    assert main(["merge", "--question-file", str(questions), "--out", str(out), str(a), str(b)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows == [{"question_id": 1, "text": "new"}, {"question_id": 3, "text": "x"}]
    assert "1 questions have no answer" in capsys.readouterr().err


def test_merge_refuses_a_half_written_chunk(tmp_path: Path, capsys) -> None:
    (tmp_path / "2_0.jsonl").write_text('{"question_id": 1, "text": "a"}\n')
    (tmp_path / "2_1.jsonl").write_text('{"question_id": 2, "text": "a"}\n{"question_id": 3, "te')
    assert (
        main(
            ["merge", "--answers-dir", str(tmp_path), "--num-chunks", "2", "--out", str(tmp_path / "m.jsonl")]
        )
        == 2
    )
    assert "2_1.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert (
        main(
            ["merge", "--answers-dir", str(tmp_path), "--num-chunks", "3", "--out", str(tmp_path / "m.jsonl")]
        )
        == 2
    )
    assert "3_0.jsonl: file not found" in capsys.readouterr().err
