"""`radio-vlm demo` (`make demo`): the whole pipeline end to end on a CPU, nothing downloaded.

    radio-vlm demo --out demo_out [--config configs/demo/demo.yaml]

Top to bottom, each stage the command a user would type (their output streams to the console and to
DIR/logs/<stage>.log):

1. `radio-vlm demo-data`: the synthetic benchmark (LLaVA training files, GQA / TextVQA / POPE / VQAv2 test
   sets in the official formats) in DIR/data;
2. `radio-distill train` + `radio-distill export`: a tiny RADIO distilled from tiny CLIP / DINOv2 / SAM
   teachers on the training images, written as a RadioWithAdaptors folder (DIR/student);
3. `AutoModel.from_pretrained(DIR/student)`: the student loads like any Hugging Face model; its token
   counts on the test images and the PCA picture of its features on one of them; then the paper's vision
   benchmark (`radio-vlm eval knn / seg-probe / zero-shot / sam` on DIR/data/vision) of the student and of
   the same architecture untrained (`--random-init`), with the tiny teachers written by
   `radio-distill save-teacher` for the zero-shot and SAM agreement;
4. `radio-llava train --stage pretrain`, then `--stage finetune`: a tiny LLaVA with the student as vision
   tower; beside it the same two stages on a copy of the images with every pixel blanked (the blind
   baseline), the two sides running at the same time on half the cores each;
5. `radio-llava generate` on the four question files (concatenated: one model load) and
   `radio-llava score` on each benchmark, for both sides;
6. one table on the console; DIR/results.json, DIR/results.md and DIR/results.png (see `demo_report`).

`radio-vlm demo --variant token-budget` (not part of `make demo`) runs stages 1, 2, 4 and 5 with the sides
of the config's `token_budget` section instead of image / blind: the same LLaVA at about the same image
tokens per image, once at long edge 96 px without a merge and once at 192 px with a 2x2 pixel-unshuffle
(`--token-merge unshuffle:2`), and prints their scores side by side (does resolution at a fixed token
budget pay off?).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..cli import main as radio_vlm_main
from .data import make_demo_data
from .report import (
    BENCHMARKS,
    benchmark_score,
    mean_image_tokens,
    student_check,
    vision_results,
    write_results,
    write_side_by_side,
)
from .stages import Stage, blank_images, run_stages

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo" / "demo.yaml"
SIDES = ("image", "blind")  # the model that sees the images, and the blind baseline
# The vision benchmark's two models: the distilled student and the same architecture untrained (the
# distillation's own starting weights: `--random-init` with the distill config's seed 0)
VISION_SIDES = {"student": [], "random init": ["--random-init"]}
# Benchmark -> (LLaVA question file, image folder), relative to DIR/data/eval/<benchmark> (demo_data layout)
QUESTIONS = {
    "gqa": ("llava_gqa_testdev_balanced.jsonl", "images"),
    "textvqa": ("llava_textvqa_val_v051_ocr.jsonl", "train_images"),
    "pope": ("llava_pope_test.jsonl", "val2014"),
    "vqav2": ("llava_vqav2_mscoco_val2014.jsonl", "val2014"),
}


def load_demo_config(path: str | Path) -> dict:
    """The demo's YAML settings (see configs/demo/demo.yaml), with the distillation config resolved."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"demo config {path} not found; pass --config (see configs/demo/demo.yaml)")
    config = yaml.safe_load(path.read_text())
    for section in ("data", "distill", "vision", "llava"):
        if not isinstance(config.get(section), dict):
            raise ValueError(f"{path}: section {section!r} is missing (see configs/demo/demo.yaml)")
    distill_config = path.parent / config["distill"]["config"]
    if not distill_config.is_file():
        raise FileNotFoundError(f"{path}: distill.config {distill_config} not found")
    config["distill"]["config"] = str(distill_config)
    if config["data"]["num_test"] < 200:
        print(f"note: {config['data']['num_test']} questions per benchmark; the demo's claims need >= 200")
    return config


def flags(options: dict) -> list[str]:
    """{"max-steps": 40, "unfreeze-vision-tower": True} -> ["--max-steps", "40", "--unfreeze-vision-tower"]."""
    argv = []
    for key, value in options.items():
        if value is True:
            argv.append(f"--{key}")
        elif value is not False and value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def combined_questions(eval_dir: Path, out: Path) -> dict:
    """Write the four LLaVA question files as one (image paths relative to `eval_dir`) to `out`, so one
    `radio-llava generate` answers all of them; returns {question_id: benchmark} to split the answers."""
    owner, lines = {}, []
    for benchmark, (question_file, image_folder) in QUESTIONS.items():
        for line in (eval_dir / benchmark / question_file).read_text().splitlines():
            question = json.loads(line)
            if question["question_id"] in owner:
                raise ValueError(f"question id {question['question_id']!r} is in two benchmarks' files")
            owner[question["question_id"]] = benchmark
            question["image"] = f"{benchmark}/{image_folder}/{question['image']}"
            lines.append(json.dumps(question))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return owner


def split_answers(answers: Path, owner: dict, out_dir: Path) -> dict[str, Path]:
    """One LLaVA answers file per benchmark from the combined one; returns {benchmark: path}."""
    rows: dict[str, list[str]] = {benchmark: [] for benchmark in QUESTIONS}
    for line in answers.read_text().splitlines():
        rows[owner[json.loads(line)["question_id"]]].append(line)
    paths = {benchmark: out_dir / f"{benchmark}.jsonl" for benchmark in QUESTIONS}
    for benchmark, path in paths.items():
        path.write_text("".join(line + "\n" for line in rows[benchmark]))
    return paths


def score_argv(benchmark: str, answers: Path, eval_dir: Path, out: Path) -> list[str]:
    """`radio-llava score` arguments for one benchmark of the demo's data."""
    folder = eval_dir / benchmark
    annotations = {
        "gqa": folder / "testdev_balanced_questions.json",
        "textvqa": folder / "TextVQA_0.5.1_val.json",
        "pope": folder / "coco",
        "vqav2": folder / "v2_mscoco_val2014_annotations.json",
    }[benchmark]
    argv = ["-m", "llava_patch.cli", "score", "--benchmark", benchmark, "--answers", str(answers)]
    argv += ["--annotations", str(annotations), "--out", str(out)]
    if benchmark == "pope":
        argv += ["--questions", str(folder / QUESTIONS["pope"][0])]
    return argv


@dataclass(frozen=True)
class Side:
    """One LLaVA of the demo: the data root it trains and is evaluated on, and its own `radio-llava train`
    flags (image size, token budget)."""

    data: Path
    flags: tuple[str, ...]


def _data_and_student(out: Path, config: dict, timings: dict, timed) -> tuple[Path, Path, Path]:
    """Stages 1-2: the synthetic benchmark in DIR/data, the distilled student exported to DIR/student.
    Returns (data root, distillation run, student folder)."""
    t0 = time.perf_counter()
    print(f"[data] writing the synthetic benchmark to {out / 'data'}", flush=True)
    data = make_demo_data(out / "data", **config["data"])
    timings["data"] = time.perf_counter() - t0
    run_dir, student_dir = out / "distill", out / "student"
    distill_argv = ["-m", "distill", "train", "--config", config["distill"]["config"]]
    distill_argv += ["--output-dir", str(run_dir), "--set", f"data.path={data / 'train' / 'images'}"]
    for override in config["distill"].get("set") or []:
        distill_argv += ["--set", override]
    timed("distill", [Stage("distill", distill_argv, out / "logs" / "distill.log")])
    export = ["-m", "distill", "export", str(run_dir), str(student_dir)]
    timed("export", [Stage("export", export, out / "logs" / "export.log")])
    return data, run_dir, student_dir


def _llava_sides(out: Path, config: dict, student_dir: Path, sides: dict[str, Side], timed) -> dict:
    """Stages 4-5 for every side at the same time: pretrain, fine-tune, answer the four benchmarks, score.
    Returns {(side, benchmark): score file}; each side's runs are in DIR/llava/<side>."""
    logs, llava = out / "logs", config["llava"]
    train = ["-m", "llava_patch.cli", "train", "--llm", str(llava["llm"]), *flags(llava.get("common") or {})]
    runs = {side: out / "llava" / side for side in sides}

    def llava_stage(stage: str, side: str, *extra: str) -> Stage:
        """One `radio-llava train --stage <stage>` run of one side, on that side's (possibly blank) images."""
        root = sides[side].data
        argv = [*train, *sides[side].flags, "--stage", stage, "--vision-tower", str(student_dir), *extra,
                "--data", str(root / "train" / f"{stage}.json"),
                "--image-folder", str(root / "train" / "images"),
                "--output-dir", str(runs[side] / stage), *flags(llava[stage])]  # fmt: skip
        return Stage(f"{stage}/{side}", argv, logs / f"{stage}_{side}.log")

    timed("pretrain", [llava_stage("pretrain", side) for side in sides])
    projector = {side: ("--pretrained-projector", str(runs[side] / "pretrain")) for side in sides}
    timed("finetune", [llava_stage("finetune", side, *projector[side]) for side in sides])

    # answer the four benchmarks' questions (one file: one model load per side) and score them
    owner = combined_questions(out / "data" / "eval", out / "llava" / "questions.jsonl")
    generate = [
        Stage(f"generate/{side}", ["-m", "llava_patch.cli", "generate", "--model", str(runs[side] / "finetune"),
              "--question-file", str(out / "llava" / "questions.jsonl"),
              "--image-folder", str(sides[side].data / "eval"),
              "--answers-file", str(runs[side] / "answers.jsonl"), *flags(llava.get("generate") or {})],
              logs / f"generate_{side}.log")
        for side in sides
    ]  # fmt: skip
    for side in sides:  # a rerun answers everything again
        (runs[side] / "answers.jsonl").unlink(missing_ok=True)
    timed("generate", generate)
    scoring, score_files = [], {}
    for side in sides:
        answers = split_answers(runs[side] / "answers.jsonl", owner, runs[side])
        for benchmark in BENCHMARKS:
            score_files[side, benchmark] = runs[side] / "scores" / f"{benchmark}.json"
            argv = score_argv(
                benchmark, answers[benchmark], out / "data" / "eval", score_files[side, benchmark]
            )
            scoring.append(Stage(f"score/{side}/{benchmark}", argv, logs / f"score_{side}_{benchmark}.log"))
    timed("score", scoring, threads_each=1)
    return score_files


def _score(score_files: dict, side: str, benchmark: str) -> float:
    return benchmark_score(benchmark, json.loads(score_files[side, benchmark].read_text()))


def run_vision_eval(vision: dict, data: Path, student: Path, teachers: Path, out: Path) -> None:
    """`radio-vlm eval` of the student and of its untrained architecture: k-NN and seg-probe on both, zero-shot
    and SAM agreement with the teachers on both (the random side shows what chance agreement looks like).

    Each is the command a user types, run in this process (radio_vlm's own CLI): eight interpreter start-ups
    would cost more than the evaluations themselves."""
    zero_shot, sam = vision["zero_shot"], vision["sam"]
    protocols = {
        "knn": ["knn", "--train", str(data / "classify" / "train"), "--val", str(data / "classify" / "val"),
                *flags(vision.get("knn") or {})],
        "seg-probe": ["seg-probe", "--data", str(data / "segmentation"), "--format", "ade20k",
                      *flags(vision.get("seg_probe") or {})],
        "zero-shot": ["zero-shot", "--adaptor", zero_shot["adaptor"], "--text-tower", str(teachers / zero_shot["teacher"]),
                      "--val", str(data / "classify" / "val"), "--classnames", "folders", "--agreement-with-teacher",
                      *flags(zero_shot.get("flags") or {})],
        "sam": ["sam", "--adaptor", sam["adaptor"], "--sam-checkpoint", str(teachers / sam["teacher"]),
                "--coco", str(data / "coco"), "--agreement-with-teacher", *flags(sam.get("flags") or {})],
    }  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and immune to a busy machine's spinning
    try:
        for side, extra in VISION_SIDES.items():
            for protocol, argv in protocols.items():
                run = ["eval", *argv, "--model", str(student), "--out", str(out / side / protocol), "--name", side,
                       "--workers", "0", *extra]  # fmt: skip
                print(f"[vision] $ radio-vlm {' '.join(run)}", flush=True)
                radio_vlm_main(run)
    finally:
        torch.set_num_threads(threads)


def run_demo(out_dir: str | Path, config_path: str | Path = DEFAULT_CONFIG) -> dict:
    """Run the whole demo into `out_dir`; returns the results dict written to results.json."""
    start = time.perf_counter()
    out = Path(out_dir).resolve()
    config = load_demo_config(config_path)
    llava = config["llava"]
    timings: dict[str, float] = {}

    def timed(name: str, stages: list[Stage], threads_each: int | None = None) -> None:
        run_stages(stages, threads_each)
        timings[name] = max(stage.seconds for stage in stages)

    # ---- 1-2. the synthetic benchmark (and its blanked twin for the blind baseline), the student
    data, run_dir, student_dir = _data_and_student(out, config, timings, timed)
    t0 = time.perf_counter()
    blanked = sum(blank_images(data / part, out / "blind_data" / part) for part in ("train", "eval"))
    for name in ("pretrain.json", "finetune.json"):
        (out / "blind_data" / "train" / name).write_bytes((data / "train" / name).read_bytes())
    timings["data"] += time.perf_counter() - t0
    print(f"[data] {blanked} blanked images for the blind baseline in {out / 'blind_data'}", flush=True)

    # ---- 3. the student as a Hugging Face model: load check, token counts, PCA picture
    t0 = time.perf_counter()
    check = student_check(student_dir, data / "eval", llava["long_edge"], out / "pca.png")
    timings["load_check"] = time.perf_counter() - t0
    vision, teachers = config["vision"], out / "teachers"
    save = ["-m", "distill", "save-teacher", vision["zero_shot"]["teacher"], vision["sam"]["teacher"]]
    timed(
        "save_teachers",
        [Stage("save-teachers", [*save, "--out", str(teachers)], out / "logs" / "save_teachers.log")],
    )
    t0, vision_dir = time.perf_counter(), out / "vision_eval"
    run_vision_eval(vision, data / "vision", student_dir, teachers, vision_dir)
    timings["vision_eval"] = time.perf_counter() - t0

    # ---- 4-5. LLaVA on the images and blind, side by side: train, answer, score
    size = ("--long-edge", str(llava["long_edge"]))
    sides = dict(zip(SIDES, (Side(data, size), Side(out / "blind_data", size))))
    score_files = _llava_sides(out, config, student_dir, sides, timed)

    # ---- 6. results
    scores = {
        benchmark: {
            "score": _score(score_files, "image", benchmark),
            "blind_score": _score(score_files, "blind", benchmark),
        }
        for benchmark in BENCHMARKS
    }
    results = {
        "benchmarks": scores,
        "tokens_per_image": {"mean": check["mean_tokens"], "clip_336": 576},
        "distill": json.loads((run_dir / "final_metrics.json").read_text()),
        "vision": vision_results(vision_dir, list(VISION_SIDES)),
        "wall_seconds": time.perf_counter() - start,
    }
    runs = {side: out / "llava" / side for side in SIDES}
    write_results(out, results, timings, check, config, runs, run_dir)
    return results


def run_token_budget(out_dir: str | Path, config_path: str | Path = DEFAULT_CONFIG) -> dict:
    """`radio-vlm demo --variant token-budget`: the demo's LLaVA trained once per `token_budget` side of the
    config (by default long edge 96 without a merge vs 192 with `unshuffle:2`, about the same tokens per
    image) and the four benchmarks' scores side by side. Returns what it writes to results.json."""
    start = time.perf_counter()
    out = Path(out_dir).resolve()
    config = load_demo_config(config_path)
    budgets = config.get("token_budget")
    if not isinstance(budgets, dict) or len(budgets) < 2:
        raise ValueError(
            f"{config_path}: --variant token-budget needs a section 'token_budget' with two or more sides "
            "(name: {long-edge: px, token-merge: none | unshuffle:<s> | pool:<s>}), see configs/demo/demo.yaml"
        )
    timings: dict[str, float] = {}

    def timed(name: str, stages: list[Stage], threads_each: int | None = None) -> None:
        run_stages(stages, threads_each)
        timings[name] = max(stage.seconds for stage in stages)

    data, run_dir, student_dir = _data_and_student(out, config, timings, timed)
    sides = {name: Side(data, tuple(flags(settings))) for name, settings in budgets.items()}
    tokens = {
        name: mean_image_tokens(student_dir, data / "eval", settings) for name, settings in budgets.items()
    }
    for name, mean in tokens.items():
        print(f"[tokens] {name}: {mean:.1f} image tokens per test image", flush=True)
    score_files = _llava_sides(out, config, student_dir, sides, timed)
    results = {
        "variant": "token-budget",
        "sides": {
            name: {
                "settings": budgets[name],
                "tokens_per_image": tokens[name],
                "benchmarks": {b: _score(score_files, name, b) for b in BENCHMARKS},
            }
            for name in budgets
        },
        "distill": json.loads((run_dir / "final_metrics.json").read_text()),
        "wall_seconds": time.perf_counter() - start,
    }
    write_side_by_side(out, results, timings, config, {name: out / "llava" / name for name in budgets})
    return results


VARIANTS = {"default": run_demo, "token-budget": run_token_budget}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument(
        "--config", default=str(DEFAULT_CONFIG), help="demo settings (default configs/demo/demo.yaml)"
    )
    parser.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        default="default",
        help="default: vs the blind baseline (make demo); token-budget: the same tokens per image at twice "
        "the resolution with a 2x2 pixel-unshuffle vs without",
    )


def run(args: argparse.Namespace) -> int:
    print(f"radio-vlm demo ({args.variant}) on {os.cpu_count()} CPUs -> {args.out}", flush=True)
    VARIANTS[args.variant](args.out, args.config)
    return 0
