"""Reading LLaVA answer / question files and official annotation files; writing scorer outputs.

Every problem with an input file is raised as `EvalInputError` naming the file (and line, for JSON lines) and
what to do, never as a bare KeyError from deep inside a scorer.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QuestionId = int | str


class EvalInputError(ValueError):
    """A malformed or mismatched evaluation input; the message names the file and line."""


@dataclass(frozen=True)
class Answer:
    """One line of a LLaVA answers file (`model_vqa_loader.py` format)."""

    question_id: QuestionId
    text: str  # the model's output
    prompt: str | None  # the question text the model saw (needed by TextVQA matching)
    where: str  # "file:line" (or "file: [index]" for a JSON array), for error messages


@dataclass
class ScoreResult:
    """What a scorer returns: the metrics JSON and one record per question (answered or not)."""

    metrics: dict[str, Any]
    per_question: list[dict[str, Any]] = field(default_factory=list)


def read_jsonl(path: str | Path) -> list[tuple[int, Any]]:
    """Parse a JSON-lines file into (1-based line number, value) pairs; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{path}: file not found")
    rows = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line.decode("utf-8"))))
            except json.JSONDecodeError as e:
                raise EvalInputError(
                    f"{path}:{number}: not valid JSON ({e.msg}); every line must be one JSON object"
                ) from None
            except UnicodeDecodeError as e:
                raise EvalInputError(f"{path}:{number}: not UTF-8 text ({e.reason})") from None
    return rows


def read_json(path: str | Path) -> Any:
    """Parse a whole-file JSON document (official annotation files)."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{path}: file not found")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except json.JSONDecodeError as e:
        raise EvalInputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise EvalInputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def check_question_id(value: Any, where: str) -> QuestionId:
    """A question id must be an int or a str (bool and float ids never match an annotation)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise EvalInputError(f"{where}: question_id must be an integer or a string, got {value!r}")
    return value


def load_answers(path: str | Path, need_prompt: bool = False) -> list[Answer]:
    """Read answers: a LLaVA answers JSONL (one `{"question_id", "text", "prompt", ...}` per line), or one JSON
    array in an official results format (VQA `{"question_id", "answer"}`, GQA `{"questionId", "prediction"}`;
    LLaVA's GQA conversion is idempotent, so converted predictions score the same)."""
    path = Path(path)
    if _starts_with_array(path):
        rows = read_json(path)
        located = [(f"{path}: [{i}]", row) for i, row in enumerate(rows)]
    else:
        located = [(f"{path}:{number}", row) for number, row in read_jsonl(path)]
    answers = []
    for where, row in located:
        if not isinstance(row, dict):
            raise EvalInputError(
                f"{where}: expected a JSON object with question_id and text, got {row!r:.80}"
            )
        qid_key = next((k for k in ("question_id", "questionId") if k in row), None)
        if qid_key is None:
            raise EvalInputError(f"{where}: no question_id; is this a LLaVA answers file?")
        qid = check_question_id(row[qid_key], where)
        text = next((row[k] for k in ("text", "answer", "prediction") if k in row), None)
        if not isinstance(text, str):
            raise EvalInputError(f"{where}: 'text' (the model's answer) must be a string, got {text!r}")
        prompt = row.get("prompt")
        if need_prompt and not isinstance(prompt, str):
            raise EvalInputError(
                f"{where}: 'prompt' must be the question string the model saw, got {prompt!r}"
            )
        answers.append(Answer(qid, text, prompt if isinstance(prompt, str) else None, where))
    return answers


def _starts_with_array(path: Path) -> bool:
    if not path.is_file():
        raise EvalInputError(f"{path}: file not found")
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(4096).lstrip()
    return head.startswith("[")


def answers_by_question(
    answers_path: str | Path, known_ids: Container[QuestionId], known_from: str | Path
) -> tuple[dict[QuestionId, Answer], int, int]:
    """Read an answers file and map question id -> answer; a repeated id keeps its last line, as every
    official scorer's dict does. Every id must be one of `known_ids` (the questions of `known_from`).

    Returns the map, the number of answer lines, and how many lines a later duplicate overrode.
    """
    answer_lines = load_answers(answers_path)
    by_id: dict[QuestionId, Answer] = {}
    for answer in answer_lines:
        if answer.question_id not in known_ids:
            raise EvalInputError(
                f"{answer.where}: question_id {answer.question_id!r} is not in {known_from}; "
                "is this an answers file for another benchmark or split?"
            )
        by_id[answer.question_id] = answer
    return by_id, len(answer_lines), len(answer_lines) - len(by_id)


def coverage_metrics(
    num_questions: int,
    num_lines: int,
    duplicates: int,
    missing: list[QuestionId],
    answers_path: str | Path,
    duplicate_rule: str = "the last line of each counts",
) -> dict[str, Any]:
    """The bookkeeping every scorer reports, and a warning on stderr when questions have no answer.

    Unanswered questions are left out of the averages (the official scorers refuse to run instead) and are
    counted here, so a partial run is visible, never scored as wrong or silently dropped.
    """
    if missing:
        print(
            f"warning: {len(missing)} of {num_questions} questions have no answer in {answers_path} "
            f"(first: {missing[:5]}); they are excluded from the metrics and counted in num_missing",
            file=sys.stderr,
        )
    if duplicates:
        print(
            f"warning: {duplicates} repeated questions in {answers_path}; {duplicate_rule}", file=sys.stderr
        )
    return {
        "num_questions": num_questions,
        "num_answer_lines": num_lines,
        "num_answered": num_questions - len(missing),
        "num_missing": len(missing),
        "missing_question_ids": missing[:100],
        "num_duplicate_answers": duplicates,
    }


def missing_record(question_id: QuestionId, **extra: Any) -> dict[str, Any]:
    """Per-question line for a question without an answer: listed, with no score."""
    return {"question_id": question_id, "prediction": None, "score": None, "missing": True, **extra}


def write_json(path: str | Path, value: Any, **dump_kwargs: Any) -> None:
    """Write JSON atomically (temp file + rename), creating parent folders."""
    _atomic_write(path, json.dumps(value, **dump_kwargs))


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically (temp file + rename), creating parent folders."""
    _atomic_write(path, "".join(json.dumps(row) + "\n" for row in rows))


def _atomic_write(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
