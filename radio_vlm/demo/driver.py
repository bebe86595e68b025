"""`radio-vlm demo` (`make demo`): the whole pipeline end to end on a CPU, nothing downloaded.

    radio-vlm demo --out demo_out [--config configs/demo/demo.yaml]

Top to bottom, each stage the command a user would type (their output streams to the console and to
DIR/logs/<stage>.log):

1. `radio-vlm demo-data`: the synthetic benchmark (LLaVA training files, GQA / TextVQA / POPE / VQAv2 test
   sets in the official formats) in DIR/data;
2. `radio-distill train` + `radio-distill export`: a tiny RADIO distilled from tiny CLIP / DINOv2 / SAM
   teachers on the training images, written as a RadioWithAdaptors folder (DIR/student);
3. `AutoModel.from_pretrained(DIR/student)`: the student loads like any Hugging Face model; its token
   counts on the test images and the PCA picture of its features on one of them;
4. `radio-llava train --stage pretrain`, then `--stage finetune`: a tiny LLaVA with the student as vision
   tower; beside it the same two stages on a copy of the images with every pixel blanked (the blind
   baseline), the two sides running at the same time on half the cores each;
5. `radio-llava generate` on the four question files (concatenated: one model load) and
   `radio-llava score` on each benchmark, for both sides;
6. one table on the console; DIR/results.json, DIR/results.md and DIR/results.png (see `demo_report`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import yaml

from .data import make_demo_data
from .report import BENCHMARKS, benchmark_score, student_check, write_results
from .stages import Stage, blank_images, run_stages

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo" / "demo.yaml"
SIDES = ("image", "blind")  # the model that sees the images, and the blind baseline
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
    for section in ("data", "distill", "llava"):
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


def run_demo(out_dir: str | Path, config_path: str | Path = DEFAULT_CONFIG) -> dict:
    """Run the whole demo into `out_dir`; returns the results dict written to results.json."""
    start = time.perf_counter()
    out = Path(out_dir).resolve()
    config = load_demo_config(config_path)
    logs, llava = out / "logs", config["llava"]
    timings: dict[str, float] = {}

    def timed(name: str, stages: list[Stage], threads_each: int | None = None) -> None:
        run_stages(stages, threads_each)
        timings[name] = max(stage.seconds for stage in stages)

    # ---- 1. the synthetic benchmark (and its blanked twin for the blind baseline)
    t0 = time.perf_counter()
    print(f"[data] writing the synthetic benchmark to {out / 'data'}", flush=True)
    data = make_demo_data(out / "data", **config["data"])
    roots = {"image": data, "blind": out / "blind_data"}
    blanked = blank_images(data, roots["blind"])
    for name in ("pretrain.json", "finetune.json"):
        (roots["blind"] / "train" / name).write_bytes((data / "train" / name).read_bytes())
    timings["data"] = time.perf_counter() - t0
    print(
        f"[data] done in {timings['data']:.0f}s; {blanked} blanked images for the blind baseline", flush=True
    )

    # ---- 2. distil and export the student
    run_dir, student_dir = out / "distill", out / "student"
    distill_argv = ["-m", "distill", "train", "--config", config["distill"]["config"]]
    distill_argv += ["--output-dir", str(run_dir), "--set", f"data.path={data / 'train' / 'images'}"]
    for override in config["distill"].get("set") or []:
        distill_argv += ["--set", override]
    timed("distill", [Stage("distill", distill_argv, logs / "distill.log")])
    export = ["-m", "distill", "export", str(run_dir), str(student_dir)]
    timed("export", [Stage("export", export, logs / "export.log")])

    # ---- 3. the student as a Hugging Face model: load check, token counts, PCA picture
    t0 = time.perf_counter()
    check = student_check(student_dir, data / "eval", llava["long_edge"], out / "pca.png")
    timings["load_check"] = time.perf_counter() - t0

    # ---- 4. LLaVA: pretrain, fine-tune; the image side and the blind side at the same time
    train = ["-m", "llava_patch.cli", "train", "--llm", str(llava["llm"])]
    train += ["--long-edge", str(llava["long_edge"]), *flags(llava.get("common") or {})]
    runs = {side: out / "llava" / side for side in SIDES}

    def llava_stage(stage: str, side: str, *extra: str) -> Stage:
        """One `radio-llava train --stage <stage>` run of one side, on that side's (possibly blank) images."""
        argv = [*train, "--stage", stage, "--vision-tower", str(student_dir), *extra,
                "--data", str(roots[side] / "train" / f"{stage}.json"),
                "--image-folder", str(roots[side] / "train" / "images"),
                "--output-dir", str(runs[side] / stage), *flags(llava[stage])]  # fmt: skip
        return Stage(f"{stage}/{side}", argv, logs / f"{stage}_{side}.log")

    timed("pretrain", [llava_stage("pretrain", side) for side in SIDES])
    projector = {side: ("--pretrained-projector", str(runs[side] / "pretrain")) for side in SIDES}
    timed("finetune", [llava_stage("finetune", side, *projector[side]) for side in SIDES])

    # ---- 5. answer the four benchmarks' questions and score them
    owner = combined_questions(data / "eval", out / "llava" / "questions.jsonl")
    generate = [
        Stage(f"generate/{side}", ["-m", "llava_patch.cli", "generate", "--model", str(runs[side] / "finetune"),
              "--question-file", str(out / "llava" / "questions.jsonl"),
              "--image-folder", str(roots[side] / "eval"),
              "--answers-file", str(runs[side] / "answers.jsonl"), *flags(llava.get("generate") or {})],
              logs / f"generate_{side}.log")
        for side in SIDES
    ]  # fmt: skip
    for side in SIDES:  # a rerun answers everything again
        (runs[side] / "answers.jsonl").unlink(missing_ok=True)
    timed("generate", generate)
    scoring, score_files = [], {}
    for side in SIDES:
        answers = split_answers(runs[side] / "answers.jsonl", owner, runs[side])
        for benchmark in BENCHMARKS:
            score_files[side, benchmark] = runs[side] / "scores" / f"{benchmark}.json"
            argv = score_argv(benchmark, answers[benchmark], data / "eval", score_files[side, benchmark])
            scoring.append(Stage(f"score/{side}/{benchmark}", argv, logs / f"score_{side}_{benchmark}.log"))
    timed("score", scoring, threads_each=1)

    # ---- 6. results
    scores = {
        benchmark: {
            "score": benchmark_score(benchmark, json.loads(score_files["image", benchmark].read_text())),
            "blind_score": benchmark_score(
                benchmark, json.loads(score_files["blind", benchmark].read_text())
            ),
        }
        for benchmark in BENCHMARKS
    }
    results = {
        "benchmarks": scores,
        "tokens_per_image": {"mean": check["mean_tokens"], "clip_336": 576},
        "distill": json.loads((run_dir / "final_metrics.json").read_text()),
        "wall_seconds": time.perf_counter() - start,
    }
    write_results(out, results, timings, check, config, runs, run_dir)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument(
        "--config", default=str(DEFAULT_CONFIG), help="demo settings (default configs/demo/demo.yaml)"
    )


def run(args: argparse.Namespace) -> int:
    print(f"radio-vlm demo on {os.cpu_count()} CPUs -> {args.out}", flush=True)
    run_demo(args.out, args.config)
    return 0
