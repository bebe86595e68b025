"""Evaluation throughput: `radio-llava generate` with `--batch-size 16` vs the batch-1 loop of LLaVA's
model_vqa_loader.py, on the same model and the same questions, greedy.

The model is a RADIO-LLaVA with the `tiny-radio` tower and a random LLaMA (the `tiny-llama` tokenizer). The
questions (64 by default) ask about images of mixed sizes and aspect ratios (portrait, landscape, square:
144-256 image tokens), so batches mix token counts and are left-padded. Both runs call `generate_answers`,
the function behind `radio-llava generate`, with the same DataLoader workers, and write an answers file; the
answers are then compared question by question.

    python bench/llava_generate.py            # a table
    python bench/llava_generate.py --json     # the last line is one JSON object
    python bench/llava_generate.py --json --hidden 256   # the narrowest LLM the goal allows

Why the LLM is hidden 1024 x 4 layers by default: what batching amortises is the weights each decoding step
reads (and the Python of each step); what it cannot is each row's own work, its prefill and the KV cache its
attention reads. Vicuna-7B in LLaVA-1.5 (4096 wide, 32 layers, ~700 tokens of context in fp16) reads 13.5 GB
of weights per step and 0.37 GB of KV cache per row: 2.7% of the weights. This LLM at ~430 tokens in fp32
reads 0.20 GB of weights and 14 MB of KV per row (7%); at hidden 256 it is 14 MB and 3.5 MB (26%), and a
batch-1 step is then mostly transformers' fixed Python cost. Hidden 1024 is the narrowest of these whose
balance resembles a real LLaVA LLM's; `--hidden 256` (the floor) is reported beside it in the README.

Two runs of both: answers up to `--max-new-tokens` (128, the cap of `radio-llava generate` and LLaVA; the
random LLM never emits EOS, so every answer is that long and decoding dominates) and up to
`--short-new-tokens` (16, short answers: the prefill of ~200 image tokens dominates; on a CPU it is compute
bound at batch 1 already, so batching shortens it little).

Wall clock is what the goal is about; CPU time (this process and its DataLoader workers, user + system) is
printed beside it because other jobs may share the cores, with the load average before and after. On a CPU
the default is one torch thread (`--threads`): with other jobs on the cores, several OpenMP threads mostly
time how they wait for each other.

JSON keys: batched_over_batch1 (questions/s at --batch-size over questions/s at batch 1, wall clock, for
--max-new-tokens; higher = batching faster), cpu_time_ratio (the same from CPU time), answers_identical
(both runs), num_different, questions_per_s, short_answers (the same ratios for --short-new-tokens), and the
settings (model, threads, workers, load).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from llava_patch.eval.generate import NUM_WORKERS, generate_answers, load_questions  # noqa: E402
from llava_patch.eval.io import write_jsonl  # noqa: E402
from llava_patch.llm import random_llama  # noqa: E402
from llava_patch.model import build  # noqa: E402

# (width, height) in px: the aspect ratios of common photos (COCO / VGA landscape and portrait, square, HD)
PHOTO_SIZES = [
    (640, 480),
    (480, 640),
    (612, 612),
    (500, 375),
    (375, 500),
    (1920, 1080),
    (1080, 1920),
    (800, 600),
]
QUESTION = "What is in the {} part of the image?\nAnswer the question using a single word or phrase."


def write_llm(folder: Path, hidden: int, layers: int) -> None:
    """A random LLaMA (`hidden` wide, `layers` deep, head size 32) with the tiny-llama tokenizer."""
    model, tokenizer = random_llama(hidden, layers, head_dim=32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def write_questions(root: Path, count: int) -> tuple[Path, Path]:
    """`count` questions on images of PHOTO_SIZES (cycled, with random colours): (question file, image folder)."""
    rng = random.Random(0)
    images = root / "images"
    images.mkdir()
    rows = []
    for i in range(count):
        width, height = PHOTO_SIZES[i % len(PHOTO_SIZES)]
        colour = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", (width, height), colour).save(images / f"{i}.png")
        part = rng.choice(["top", "bottom", "left", "right"])
        rows.append({"question_id": i, "image": f"{i}.png", "text": QUESTION.format(part)})
    write_jsonl(root / "questions.jsonl", rows)
    return root / "questions.jsonl", images


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the DataLoader workers, joined at the end of
    each run), user + system."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed_run(
    model,
    processor,
    questions,
    images: Path,
    out: Path,
    batch_size: int,
    max_new_tokens: int,
    num_workers: int,
):
    """(wall s, CPU s, {question_id: answer}) of one `generate_answers` call."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    generate_answers(
        model,
        processor,
        questions,
        images,
        out,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        num_workers=num_workers,
    )
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return wall, cpu, {row["question_id"]: row["text"] for row in rows}


def compare(
    model,
    processor,
    questions,
    images: Path,
    root: Path,
    batch_size: int,
    max_new_tokens: int,
    num_workers: int,
) -> dict:
    """Batch 1 and `batch_size` on the same questions: times, answers compared question by question."""
    runs = {
        size: timed_run(
            model,
            processor,
            questions,
            images,
            root / f"{size}_{max_new_tokens}.jsonl",
            size,
            max_new_tokens,
            num_workers,
        )
        for size in (1, batch_size)
    }
    (wall_1, cpu_1, answers_1), (wall_b, cpu_b, answers_b) = runs[1], runs[batch_size]
    assert answers_1.keys() == answers_b.keys() == {q.question_id for q in questions}
    different = [qid for qid in answers_1 if answers_1[qid] != answers_b[qid]]
    return {
        "max_new_tokens": max_new_tokens,
        "batched_over_batch1": wall_1 / wall_b,
        "cpu_time_ratio": cpu_1 / cpu_b,
        "num_different": len(different),
        "different": different[:10],
        "runs": {size: {"wall_s": wall, "cpu_s": cpu} for size, (wall, cpu, _) in runs.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--max-new-tokens", type=int, default=128, help="radio-llava generate's (LLaVA's) cap"
    )
    parser.add_argument("--short-new-tokens", type=int, default=16, help="the short-answer run beside it")
    parser.add_argument("--hidden", type=int, default=1024, help="the LLM's hidden size (>= 256)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--num-workers", type=int, default=NUM_WORKERS, help="generate's DataLoader workers, both runs"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    if args.hidden < 256:
        parser.error("--hidden must be at least 256: narrower, Python overhead, not the LLM, dominates")
    torch.set_num_threads(args.threads)
    load_before = round(os.getloadavg()[0], 2)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_llm(root / "llm", args.hidden, args.layers)
        question_file, images = write_questions(root, args.questions)
        questions = load_questions(question_file)
        model, processor = build("tiny-radio", str(root / "llm"))
        model.to(device).eval()
        timed_run(
            model,
            processor,
            questions[: args.batch_size],
            images,
            root / "warmup.jsonl",
            args.batch_size,
            2,
            args.num_workers,
        )
        long, short = (
            compare(model, processor, questions, images, root, args.batch_size, n, args.num_workers)
            for n in (args.max_new_tokens, args.short_new_tokens)
        )
        tokens = [processor.image_processor.num_image_tokens(h, w) for w, h in PHOTO_SIZES]

    load = [load_before, round(os.getloadavg()[0], 2)]
    print(f"{'max new tokens':>14} | {'batch':>5} | {'wall s':>8} | {'CPU s':>8} | {'questions/s':>11}")
    for regime in (long, short):
        for size, run in regime["runs"].items():
            qps = args.questions / run["wall_s"]
            print(
                f"{regime['max_new_tokens']:>14} | {size:>5} | {run['wall_s']:8.2f} | {run['cpu_s']:8.2f} | {qps:11.2f}"
            )
    for regime in (long, short):
        print(
            f"{regime['max_new_tokens']} new tokens: batch {args.batch_size} over batch 1 "
            f"{regime['batched_over_batch1']:.2f}x wall, {regime['cpu_time_ratio']:.2f}x CPU time; "
            f"{regime['num_different']} of {args.questions} answers differ {regime['different'] or ''}"
        )
    print(
        f"LLM hidden {args.hidden}, {args.layers} layers; image tokens {min(tokens)}-{max(tokens)} per image; "
        f"{torch.get_num_threads()} threads, {args.num_workers} DataLoader workers on {os.cpu_count()} CPUs; "
        f"load average {load[0]} before, {load[1]} after"
    )
    if args.json:
        result = {
            "batched_over_batch1": round(long["batched_over_batch1"], 4),
            "cpu_time_ratio": round(long["cpu_time_ratio"], 4),
            "answers_identical": long["num_different"] == short["num_different"] == 0,
            "num_different": long["num_different"] + short["num_different"],
            "questions_per_s": {
                str(size): round(args.questions / run["wall_s"], 4) for size, run in long["runs"].items()
            },
            "short_answers": {
                "max_new_tokens": short["max_new_tokens"],
                "batched_over_batch1": round(short["batched_over_batch1"], 4),
                "cpu_time_ratio": round(short["cpu_time_ratio"], 4),
            },
            "baseline": "batch-1 loop (LLaVA model_vqa_loader.py)",
            "questions": args.questions,
            "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens,
            "llm": f"random LLaMA hidden {args.hidden}, {args.layers} layers",
            "image_tokens_min_max": [min(tokens), max(tokens)],
            "device": device,
            "threads": torch.get_num_threads(),
            "num_workers": args.num_workers,
            "cpus": os.cpu_count(),
            "load_avg_1min_before_after": load,
        }
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
