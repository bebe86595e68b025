"""TextVQA, scored as LLaVA-1.5 scores it (llava/eval/eval_textvqa.py + m4c_evaluator.py).

Matching: LLaVA's TextVQA question file puts the TextVQA *image id* in `question_id`, so a result is found by
(image id, question) where the question is recovered from the prompt (`question_from_prompt`) and
lower-cased. Annotations are keyed by (image_id, question.lower()); a repeated key keeps the last annotation.

Scoring (`TextVQAAccuracyEvaluator`): the prediction and all ten human answers go through
`llava_answer_processor` (always: there is no unanimity gate here, unlike the official VQA script); each
distinct processed human answer u scores mean over i of min(1, #{j != i : answer_j == u} / 3), leave-one-out
by index; the prediction gets its answer's score or 0. `accuracy` = 100 * sum(scores) / len(scores) over the
answer lines, unrounded (LLaVA prints it with 2 decimals).

Every answer line counts, as in LLaVA: if two lines match the same question, both are scored (and reported
as duplicates). Annotations that no line matches are counted in num_missing, never scored.

Two prompt conventions exist, and the RADIOv2.5 tech report publishes both columns: LLaVA-1.5's
(`llava_textvqa_val_v051_ocr.jsonl`, "{question}\nReference OCR token: {tokens}\nAnswer the question using a
single word or phrase.", the OCR line left out where an image has none) and lmms-eval's without OCR tokens
("{question.capitalize()}\nAnswer the question using a single word or phrase.", its TextVQA default
`ocr: false`). `radio-llava textvqa-no-ocr` writes the second question file from the first; the scorer
matches both the same way and reports which one it scored (`prompt_style`, from the answers' prompts).

    radio-llava textvqa-no-ocr llava_textvqa_val_v051_ocr.jsonl llava_textvqa_val_v051_no_ocr.jsonl
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from llava_patch.eval.io import (
    EvalInputError,
    ScoreResult,
    coverage_metrics,
    load_answers,
    missing_record,
    read_json,
    read_jsonl,
    write_jsonl,
)
from llava_patch.eval.normalize import llava_answer_processor

# eval_textvqa.py `prompt_processor`, for the "OCR tokens: ... Question: ... Short answer:" prompt style
_OCR_STYLE_QUESTION = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)
NUM_HUMAN_ANSWERS = 10  # m4c_evaluator asserts exactly ten answers per question
OCR_LINE = "Reference OCR token: "  # LLaVA-1.5's question file


def has_ocr_tokens(prompt: str) -> bool:
    """Whether a TextVQA prompt carries OCR tokens (either style `question_from_prompt` parses)."""
    return prompt.startswith("OCR tokens: ") or OCR_LINE in prompt


def prompt_without_ocr(text: str) -> str | None:
    """lmms-eval's prompt for a LLaVA-1.5 TextVQA question text: the question capitalised (`str.capitalize`, as
    lmms-eval) and the answer instruction, without the OCR line; None if `text` is not in LLaVA's layout."""
    lines = text.split("\n")
    if len(lines) == 3 and lines[1].startswith(OCR_LINE):
        del lines[1]
    if len(lines) != 2 or not lines[0] or any(OCR_LINE in line for line in lines):
        return None
    return f"{lines[0].capitalize()}\n{lines[1]}"


def question_from_prompt(prompt: str) -> str | None:
    """The lower-cased question inside a LLaVA TextVQA prompt, or None where LLaVA's parser asserts.

    - starts with "OCR tokens: " -> the text between "Question: " and " Short answer:";
    - contains "Reference OCR token: " and has 3 lines -> line 2 if the prompt starts with the OCR line,
      else line 1 (LLaVA-1.5's file: "{question}\\nReference OCR token: ...\\nAnswer the question ...");
    - has 2 lines -> line 1 (the prompt without OCR tokens);
    - anything else (1 line, 4+ lines, OCR tokens containing a newline) -> None.
    """
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = _OCR_STYLE_QUESTION.search(prompt)
        question = match.group(1) if match else None
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        question = None
    return None if question is None else question.lower()


def human_answer_scores(human_answers: list[str]) -> dict[str, float]:
    """Soft score of each distinct processed human answer (m4c `_compute_answer_scores`)."""
    processed = [llava_answer_processor(a) for a in human_answers]
    scores = {}
    for candidate in set(processed):
        per_left_out = []
        for i in range(len(processed)):
            matches = sum(1 for j, other in enumerate(processed) if j != i and other == candidate)
            per_left_out.append(min(1, float(matches) / 3))
        scores[candidate] = sum(per_left_out) / len(per_left_out)
    return scores


def textvqa_accuracy(prediction: str, human_answers: list[str]) -> float:
    """LLaVA's TextVQA score of one prediction, in 0..1."""
    return human_answer_scores(human_answers).get(llava_answer_processor(prediction), 0.0)


def load_textvqa_annotations(path: str | Path) -> dict[tuple[Any, str], dict[str, Any]]:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise EvalInputError(
            f"{path}: expected the official TextVQA annotations ({{'data': [...]}}, TextVQA_0.5.1_val.json)"
        )
    annotations = {}
    for index, ann in enumerate(data["data"]):
        where = f"{path}: data[{index}]"
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("question"), str):
            raise EvalInputError(f"{where}: each entry needs image_id and a string question")
        if not isinstance(ann.get("answers"), list) or not all(isinstance(a, str) for a in ann["answers"]):
            raise EvalInputError(f"{where}: 'answers' must be a list of strings")
        annotations[(ann["image_id"], ann["question"].lower())] = ann
    return annotations


def score_textvqa(answers_path: str | Path, annotations_path: str | Path) -> ScoreResult:
    """Score a LLaVA TextVQA answers file (its question_id holds the image id; the prompt gives the question)."""
    annotations = load_textvqa_annotations(annotations_path)
    answer_lines = load_answers(answers_path, need_prompt=True)
    per_question, matched = [], set()
    for answer in answer_lines:
        question = question_from_prompt(answer.prompt)
        if question is None:
            raise EvalInputError(
                f"{answer.where}: cannot find the question in prompt {answer.prompt!r:.120}; LLaVA "
                "expects '{question}\\nAnswer ...' or '{question}\\nReference OCR token: ...\\nAnswer ...'"
            )
        key = (answer.question_id, question)
        if key not in annotations:
            raise EvalInputError(
                f"{answer.where}: no annotation in {annotations_path} for image id "
                f"{answer.question_id!r} and question {question!r}; is this an answers file for another benchmark?"
            )
        ann = annotations[key]
        if len(ann["answers"]) != NUM_HUMAN_ANSWERS:  # checked where LLaVA asserts: only for matched entries
            raise EvalInputError(
                f"{annotations_path}: the annotation for image id {ann['image_id']!r}, question {ann['question']!r} "
                f"(matched by {answer.where}) has {len(ann['answers'])} answers; LLaVA's evaluator "
                f"needs exactly {NUM_HUMAN_ANSWERS}"
            )
        matched.add(key)
        score = textvqa_accuracy(answer.text, ann["answers"])
        per_question.append(
            {
                "question_id": answer.question_id,
                "prediction": answer.text,
                "score": score,
                "textvqa_question_id": ann.get("question_id"),
            }
        )
    missing = [key for key in annotations if key not in matched]
    scores = [row["score"] for row in per_question]
    with_ocr = sum(has_ocr_tokens(answer.prompt) for answer in answer_lines)
    metrics = {
        "benchmark": "textvqa",
        "accuracy": 100.0 * (sum(scores) / len(scores)) if scores else None,
        # LLaVA-1.5's file leaves the OCR line out where an image has no OCR tokens: one prompt with them is enough
        "prompt_style": "with_ocr_tokens" if with_ocr else "without_ocr_tokens",
        "num_prompts_with_ocr_tokens": with_ocr,
        **coverage_metrics(
            len(annotations),
            len(answer_lines),
            len(answer_lines) - len(matched),
            [annotations[key].get("question_id", key[0]) for key in missing],
            answers_path,
            duplicate_rule="every line is scored, as in LLaVA",
        ),
    }
    per_question += [
        missing_record(
            annotations[key]["image_id"],
            question=annotations[key]["question"],
            textvqa_question_id=annotations[key].get("question_id"),
        )
        for key in missing
    ]
    return ScoreResult(metrics, per_question)


def write_questions_without_ocr(source: str | Path, out: str | Path) -> int:
    """Write `source` (LLaVA's llava_textvqa_val_v051_ocr.jsonl) to `out` with lmms-eval's prompts without OCR
    tokens; every other field (question_id = image id, image) as it was. Returns the number of questions."""
    rows = []
    for number, row in read_jsonl(source):
        text = row.get("text") if isinstance(row, dict) else None
        prompt = prompt_without_ocr(text) if isinstance(text, str) else None
        if prompt is None:
            raise EvalInputError(
                f"{source}:{number}: not a LLaVA TextVQA question ('{{question}}\\nReference OCR token: ...\\n"
                f"Answer ...' or '{{question}}\\nAnswer ...'), got text {text!r:.120}"
            )
        rows.append({**row, "text": prompt})
    write_jsonl(out, rows)
    return len(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("questions", help="LLaVA's llava_textvqa_val_v051_ocr.jsonl")
    parser.add_argument("out", help="the question file to write, e.g. llava_textvqa_val_v051_no_ocr.jsonl")


def run(args: argparse.Namespace) -> int:
    count = write_questions_without_ocr(args.questions, args.out)
    print(f"wrote {count} TextVQA questions without OCR tokens (lmms-eval's prompt) to {args.out}")
    return 0
