"""`radio-llava generate` on the tiny twins: prompt, batching, chunks + merge, resume, missing images."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from llava_patch.cli import main
from llava_patch.eval.generate import (
    answered_question_ids,
    build_prompt,
    chunk_slice,
    generate_answers,
    load_questions,
    model_name,
)
from llava_patch.eval.io import EvalInputError, write_jsonl
from llava_patch.model import build, load_pretrained
from radio_vlm.demo.data import write_textvqa
from radio_vlm.models.image_io import EXIF_ORIENTATION, image_size

SUFFIX = "\nAnswer the question using a single word or phrase."
SIZES = [(96, 64), (64, 112), (80, 80), (112, 48), (64, 64)]  # differently sized and shaped images


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny RADIO-LLaVA and 5 questions on differently sized images."""
    root = tmp_path_factory.mktemp("gen")
    model, processor = build("tiny-radio", "tiny-llama")
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    (root / "images").mkdir()
    rows = []
    for i, (w, h) in enumerate(SIZES):
        Image.new("RGB", (w, h), (40 * i, 200 - 30 * i, 90)).save(root / "images" / f"{i}.png")
        rows.append({"question_id": f"q{i}", "image": f"{i}.png", "text": f"What is shown {i}?" + SUFFIX})
    write_jsonl(root / "questions.jsonl", rows)
    return {
        "root": root,
        "model": root / "model",
        "images": root / "images",
        "questions": root / "questions.jsonl",
    }


@pytest.fixture(scope="module")
def loaded(bench):
    model, processor = load_pretrained(bench["model"])
    return model.eval(), processor


def _generate(
    loaded, bench, out: Path, questions=None, batch_size: int = 1, num_workers: int = 1
) -> list[dict]:
    model, processor = loaded
    questions = load_questions(bench["questions"]) if questions is None else questions
    generate_answers(
        model,
        processor,
        questions,
        bench["images"],
        out,
        batch_size=batch_size,
        max_new_tokens=5,
        num_workers=num_workers,
    )
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_prompt_is_llava_15_vicuna_v1() -> None:
    # model_vqa_loader.py: "<image>\n" + text as the user turn of conv_vicuna_v1, ending with "ASSISTANT:"
    assert build_prompt("What?" + SUFFIX) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat?" + SUFFIX + " ASSISTANT:"
    )


@pytest.mark.parametrize(
    ("n", "chunks", "expected"),
    [
        (10, 3, [(0, 4), (4, 8), (8, 10)]),
        (5, 5, [(i, i + 1) for i in range(5)]),
        (2, 4, [(0, 1), (1, 2), (2, 2), (2, 2)]),
    ],
)
def test_chunks_are_llavas_contiguous_slices(n: int, chunks: int, expected: list[tuple[int, int]]) -> None:
    # split_list: chunk size ceil(N / n); past the last slice LLaVA fails, here the chunk is empty
    assert [(s.start, s.stop) for s in (chunk_slice(n, chunks, k) for k in range(chunks))] == expected
    with pytest.raises(ValueError, match="--chunk-idx"):
        chunk_slice(n, chunks, chunks)


def test_model_id_as_llava_names_it() -> None:
    assert model_name("ckpt/llava-radio-7b/") == "llava-radio-7b"
    assert model_name("runs/finetune/checkpoint-500") == "finetune_checkpoint-500"


def test_batched_answers_equal_one_by_one_and_chunks_merge_in_order(loaded, bench, tmp_path: Path) -> None:
    model, processor = loaded
    batches = []  # image tokens of each row, per generate call
    generate = model.generate

    def recording(**inputs):
        batches.append(sorted((inputs["input_ids"] == processor.image_token_id).sum(1).tolist()))
        return generate(**inputs)

    single = _generate(loaded, bench, tmp_path / "single.jsonl", batch_size=1, num_workers=0)
    model.generate = recording
    try:
        batched = _generate(loaded, bench, tmp_path / "batched.jsonl", batch_size=3, num_workers=2)
    finally:
        del model.generate
    # batches are grouped by image tokens (in file order they would be [176, 160, 256], [112, 256]); the
    # answers file is in question order all the same
    tokens = sorted(processor.image_processor.num_image_tokens(h, w) for w, h in SIZES)
    assert tokens == [112, 160, 176, 256, 256] and batches == [tokens[:3], tokens[3:]]
    assert (
        [r["question_id"] for r in single]
        == [r["question_id"] for r in batched]
        == [f"q{i}" for i in range(5)]
    )
    assert [r["text"] for r in batched] == [r["text"] for r in single]  # left padding, mixed image sizes
    assert set(single[0]) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    assert single[0]["prompt"] == "What is shown 0?" + SUFFIX  # the question text, as LLaVA writes it
    questions = load_questions(bench["questions"])
    for k in range(2):
        part = questions[chunk_slice(len(questions), 2, k)]
        _generate(loaded, bench, tmp_path / f"2_{k}.jsonl", questions=part, batch_size=2)
    merged = tmp_path / "merge.jsonl"
    assert main(["merge", "--answers-dir", str(tmp_path), "--num-chunks", "2", "--out", str(merged)]) == 0
    rows = [json.loads(line) for line in merged.read_text().splitlines()]
    assert [(r["question_id"], r["text"]) for r in rows] == [(r["question_id"], r["text"]) for r in single]


def test_resume_after_interrupted_run_has_no_duplicate_and_no_gap(loaded, bench, tmp_path: Path) -> None:
    reference = _generate(loaded, bench, tmp_path / "reference.jsonl", batch_size=2)
    out = tmp_path / "answers.jsonl"
    lines = (tmp_path / "reference.jsonl").read_text().splitlines(keepends=True)
    out.write_text(lines[0] + lines[1] + lines[2][:25])  # killed while writing the third answer
    resumed = _generate(loaded, bench, out, batch_size=2)
    assert [r["question_id"] for r in resumed] == [f"q{i}" for i in range(5)]
    assert [r["text"] for r in resumed] == [r["text"] for r in reference]
    assert resumed[:2] == reference[:2]  # untouched, not regenerated
    assert _generate(loaded, bench, out) == resumed  # a finished file: nothing to do


def test_answered_ids_reject_a_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"question_id": 1, "text": "a"}\nnot json\n{"question_id": 2, "text": "b"}\n')
    with pytest.raises(EvalInputError, match=r"a.jsonl:2: not an answer line"):
        answered_question_ids(path)
    path.write_text('{"question_id": 1, "text": "a"}')  # complete line, newline not yet written
    assert answered_question_ids(path) == {1} and path.read_text().endswith("\n")


def test_missing_image_names_the_file(loaded, bench, tmp_path: Path) -> None:
    questions = load_questions(bench["questions"])
    bad = [questions[0], type(questions[1])("q9", "nowhere.jpg", "What?" + SUFFIX, 7)]
    with pytest.raises(FileNotFoundError, match=r"question 'q9' \(line 7\): image .*nowhere.jpg not found"):
        generate_answers(*loaded, bad, bench["images"], tmp_path / "a.jsonl")
    assert not (tmp_path / "a.jsonl").exists()  # nothing generated before the check


@pytest.mark.parametrize("batch_size", [1, 2])
def test_unreadable_image_names_the_question_and_keeps_the_answers_before_it(
    loaded, bench, tmp_path: Path, batch_size: int
) -> None:
    """Batched, the image headers are read first (to group the batches): nothing is generated. At batch 1 a
    DataLoader worker meets the image: its error names the question, and the answers before it stay."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("0.png", "1.png"):
        (images / name).write_bytes((bench["images"] / name).read_bytes())
    (images / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    questions = load_questions(bench["questions"])[:2]
    questions.append(type(questions[0])("q9", "bad.jpg", "What?" + SUFFIX, 7))
    out = tmp_path / "answers.jsonl"
    with pytest.raises(EvalInputError, match=r"question 'q9' \(line 7\): .*bad.jpg"):
        generate_answers(
            *loaded, questions, images, out, batch_size=batch_size, max_new_tokens=2, num_workers=1
        )
    if batch_size > 1:
        assert not out.exists()
    else:
        assert [json.loads(line)["question_id"] for line in out.read_text().splitlines()] == ["q0", "q1"]


def test_image_size_applies_exif_rotation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored landscape, shown portrait (a phone photo)
    Image.new("RGB", (64, 32)).save(tmp_path / "rotated.jpg", exif=exif)
    Image.new("RGB", (64, 32)).save(tmp_path / "plain.jpg")
    assert image_size(tmp_path / "rotated.jpg") == (64, 32) and image_size(tmp_path / "plain.jpg") == (32, 64)


def test_answers_of_an_interrupted_batched_run_end_in_question_order(loaded, bench, tmp_path: Path) -> None:
    """A batched run writes in batch order and restores question order at the end; a run killed before that
    gets it from the next run, even when nothing is left to answer."""
    out = tmp_path / "answers.jsonl"
    reference = _generate(loaded, bench, out, batch_size=2)
    out.write_text("".join(json.dumps(row) + "\n" for row in reversed(reference)))
    assert _generate(loaded, bench, out, batch_size=2) == reference


def test_generate_cli(bench, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli.jsonl"
    argv = ["generate", "--model", str(bench["model"]), "--question-file", str(bench["questions"])]
    argv += ["--image-folder", str(bench["images"]), "--answers-file", str(out), "--max-new-tokens", "3"]
    assert main(argv + ["--num-chunks", "2", "--chunk-idx", "1", "--batch-size", "2"]) == 0
    assert [json.loads(x)["question_id"] for x in out.read_text().splitlines()] == ["q3", "q4"]
    assert json.loads(out.read_text().splitlines()[0])["model_id"] == "model"


@pytest.mark.slow
def test_textvqa_script_without_ocr_tokens(bench, tmp_path: Path, subprocess_env) -> None:
    """scripts/eval/textvqa.sh MODEL without-ocr: writes lmms-eval's question file from LLaVA's, generates,
    merges and scores, reporting the convention it scored."""
    eval_dir = tmp_path / "eval"
    write_textvqa(eval_dir / "textvqa", random.Random(0), 3, set())  # LLaVA's files, with OCR lines
    script = Path(__file__).resolve().parents[2] / "scripts" / "eval" / "textvqa.sh"
    env = {**subprocess_env, "EVAL_DIR": str(eval_dir), "CUDA_VISIBLE_DEVICES": "0"}
    env["PATH"] = (
        os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    )  # radio-llava of this environment
    result = subprocess.run(
        ["bash", str(script), str(bench["model"]), "without-ocr"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    split = eval_dir / "textvqa" / "llava_textvqa_val_v051_no_ocr.jsonl"
    assert all("OCR" not in json.loads(line)["text"] for line in split.read_text().splitlines())
    metrics = json.loads(
        (eval_dir / "textvqa" / "answers" / split.stem / "model" / "metrics.json").read_text()
    )
    assert metrics["prompt_style"] == "without_ocr_tokens" and metrics["num_answered"] == 3
    bad = subprocess.run(
        ["bash", str(script), str(bench["model"]), "ocr"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and "with-ocr|without-ocr" in bad.stderr
