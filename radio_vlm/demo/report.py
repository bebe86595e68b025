"""What `radio-vlm demo` reports: the student check, one table, results.json / results.md and a figure.

results.json of `make demo` (the schema of issue 6):

    {"benchmarks": {"gqa": {"score": float, "blind_score": float}, "textvqa": {...}, "pope": {...},
                    "vqav2": {...}},                       # 0..100; POPE: accuracy over its 3 categories
     "tokens_per_image": {"mean": float, "clip_336": 576}, # mean over the test images, at the demo's long edge
     "distill": {...},                                     # the distillation run's final_metrics.json
     "vision": {"knn_top1": {"student": float, "random init": float}, "seg_probe_miou": {...},
                "zero_shot_agreement": {...}, "zero_shot_logit_correlation": {...},
                "sam_agreement_miou": {...}},                # radio-vlm eval, 0..100
     "wall_seconds": float}

results.json of `--variant token-budget`: {"variant": "token-budget", "sides": {name: {"settings": the side's
`radio-llava train` flags, "tokens_per_image": float, "benchmarks": {benchmark: score}}}, "distill", "wall_seconds"}.
"""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image
import torch

from ..evaluation.report import write_report
from ..features import encode_images, load_model_and_processor
from ..models.configuration_radio_with_adaptors import RadioWithAdaptorsConfig
from ..models.image_io import image_size, load_image
from ..models.image_processing_radio import RadioImageProcessor
from ..visualize import pca_picture

BENCHMARKS = ("gqa", "textvqa", "pope", "vqav2")
MARGIN = 25.0  # points a benchmark must score above its blind baseline (issue 6, "Budget")
# The test image shown in the PCA picture (demo_data names; a landscape image with three shapes at seed 0)
PCA_IMAGE = "gqa/images/n100000.jpg"
SIDE_COLORS = ("tab:blue", "tab:gray", "tab:orange", "tab:green")  # image, blind (or the token budgets)
# `radio-llava train` flags of a demo side that decide its token count -> RadioImageProcessor setting
TOKEN_FLAGS = {"long-edge": "long_edge", "token-merge": "token_merge", "max-image-tokens": "max_image_tokens"}


# The demo's vision rows: results.json key -> (row label, eval protocol, metrics key)
VISION_ROWS = {
    "knn_top1": ("k-NN top-1 (shape classes)", "knn", "top1"),
    "seg_probe_miou": ("seg-probe mIoU (shapes + word)", "seg-probe", "miou"),
    "zero_shot_agreement": ("zero-shot agreement with the CLIP teacher", "zero-shot", "agreement"),
    "zero_shot_logit_correlation": (
        "zero-shot logit correlation with the CLIP teacher",
        "zero-shot",
        "logit_correlation",
    ),
    "sam_agreement_miou": ("SAM mIoU against the SAM teacher's masks", "sam", "agreement_miou"),
}


def vision_results(eval_dir: Path, sides: list[str]) -> dict:
    """{results key: {side: value}} from the `radio-vlm eval` runs in eval_dir/<side>/<protocol>; also writes
    the side-by-side eval_dir/report.md and report.png (`radio-vlm eval report`)."""
    results = {}
    for key, (_, protocol, metric) in VISION_ROWS.items():
        runs = {side: json.loads((eval_dir / side / protocol / "metrics.json").read_text()) for side in sides}
        results[key] = {side: run["metrics"][metric] for side, run in runs.items()}
    write_report([eval_dir / side for side in sides], eval_dir)
    return results


def vision_table(results: dict) -> str:
    """The vision rows as a Markdown table, one column per evaluated model."""
    sides = list(next(iter(results["vision"].values())))
    rows = ["| vision benchmark | " + " | ".join(sides) + " |", "|---|" + "---:|" * len(sides)]
    for key, (label, _, _) in VISION_ROWS.items():
        values = results["vision"][key]
        rows.append(f"| {label} | " + " | ".join(f"{values[side]:.1f}" for side in sides) + " |")
    return "\n".join(rows)


def benchmark_score(benchmark: str, metrics: dict) -> float:
    """The headline number of a `radio-llava score` metrics JSON, in 0..100: accuracy (VQAv2 and TextVQA:
    VQA accuracy; GQA: exact match); POPE: accuracy over all categories' questions."""
    if benchmark != "pope":
        return float(metrics["accuracy"])
    categories = metrics["per_category"].values()
    correct = sum(c["tp"] + c["tn"] for c in categories)
    total = sum(c["tp"] + c["tn"] + c["fp"] + c["fn"] for c in categories)
    return 100.0 * correct / total


@torch.inference_mode()
def student_check(student_dir: Path, eval_dir: Path, long_edge: int, picture: Path) -> dict:
    """Load the exported student with `AutoModel.from_pretrained`, run it on the test images and draw the
    PCA picture of its features on one. Returns {"mean_tokens", "num_images", "model", "picture", ...}."""
    model, processor = load_model_and_processor(student_dir)
    sizes = _image_sizes(eval_dir)
    tokens = [processor.num_image_tokens(height, width, long_edge=long_edge) for height, width in sizes]
    image = load_image(eval_dir / PCA_IMAGE)
    # A larger view than the LLaVA input, so the picture shows more than a handful of tokens.
    view = min(4 * long_edge, model.config.max_resolution or 4 * long_edge)
    (item,) = encode_images(model, processor, [image], long_edge=view)
    pca = pca_picture(item["features"], item["grid_hw"], item["token_px"], item["image_size"], image)
    pca.save(picture)
    check = {
        "model": type(model).__name__,
        "embed_dim": model.embed_dim,
        "adaptors": sorted(model.adaptors),
        "num_images": len(sizes),
        "mean_tokens": sum(tokens) / len(tokens),
        "pca_image": PCA_IMAGE,
        "pca_grid": list(item["grid_hw"]),
        "picture": str(picture),
    }
    print(
        f"[load] AutoModel.from_pretrained({student_dir}) -> {check['model']} (embed {check['embed_dim']}, "
        f"adaptors {check['adaptors']}); {check['mean_tokens']:.1f} tokens per test image at long edge "
        f"{long_edge} px (CLIP-336: 576); PCA picture {picture}",
        flush=True,
    )
    return check


def _image_sizes(eval_dir: Path) -> list[tuple[int, int]]:
    """(height, width) of every test image under `eval_dir`."""
    return [
        image_size(path) for path in sorted(p for p in eval_dir.rglob("*") if p.suffix in (".jpg", ".png"))
    ]


def mean_image_tokens(student_dir: Path, eval_dir: Path, side_flags: dict) -> float:
    """Mean image tokens per test image for a demo side (its long edge, token merge and cap, as
    `radio-llava train` flags), counted by the image processor `radio-llava train` builds for the student."""
    settings = {TOKEN_FLAGS[k]: v for k, v in side_flags.items() if k in TOKEN_FLAGS}
    processor = RadioImageProcessor.from_model_config(
        RadioWithAdaptorsConfig.from_pretrained(student_dir), **settings
    )
    tokens = [processor.num_image_tokens(height, width) for height, width in _image_sizes(eval_dir)]
    return sum(tokens) / len(tokens)


def table(results: dict) -> str:
    """The results as a Markdown table (also what the console shows)."""
    rows = ["| benchmark | score | blind | margin |", "|---|---:|---:|---:|"]
    for name, r in results["benchmarks"].items():
        margin = r["score"] - r["blind_score"]
        flag = "" if margin >= MARGIN else f" (< {MARGIN:.0f})"
        rows.append(f"| {name} | {r['score']:.1f} | {r['blind_score']:.1f} | {margin:+.1f}{flag} |")
    return "\n".join(rows)


def _trainer_losses(run: Path) -> tuple[list[int], list[float]]:
    state = run / "trainer_state.json"
    if not state.is_file():
        return [], []
    log = json.loads(state.read_text())["log_history"]
    # runs shorter than --logging-steps log only the summary: plot its mean loss at the last step
    history = [h for h in log if "loss" in h] or [
        {"step": h["step"], "loss": h["train_loss"]} for h in log if "train_loss" in h
    ]
    return [h["step"] for h in history], [h["loss"] for h in history]


def write_figure(path: Path, runs: dict[str, Path], distill_run: Path, pca: Path | None) -> None:
    """results.png: distillation loss, LLaVA pretrain and fine-tune losses (one curve per side of `runs`:
    image vs blind, or the token budgets) and the PCA picture when given."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4 if pca else 3, figsize=(18 if pca else 14, 4))
    lines = [json.loads(line) for line in (distill_run / "metrics.jsonl").read_text().splitlines() if line]
    metrics = [m for m in lines if "loss" in m]  # training lines (eval: lines carry eval/* only)
    axes[0].plot([m["step"] for m in metrics], [m["loss"] for m in metrics], color="tab:green")
    axes[0].set_title("distillation loss (student vs teachers)")
    for ax, stage in zip(axes[1:3], ("pretrain", "finetune")):
        for (side, run), color in zip(runs.items(), SIDE_COLORS):
            steps, losses = _trainer_losses(run / stage)
            ax.plot(steps, losses, color=color, label=side, marker="." if len(steps) < 3 else None)
        ax.set_title(f"LLaVA {stage} loss")
        ax.set_yscale("log")  # the first steps' loss would flatten the rest
        ax.legend()
    for ax in axes[:3]:
        ax.set_xlabel("step")
    if pca:
        axes[3].imshow(PIL.Image.open(pca))
        axes[3].set_title("test image | PCA of the student's features")
        axes[3].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cos(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_results(
    out: Path, results: dict, timings: dict, check: dict, config: dict, runs: dict, distill_run: Path
) -> None:
    """Print the table; write results.json, results.md and results.png into `out`."""
    write_figure(out / "results.png", runs, distill_run, Path(check["picture"]))
    teachers = results["distill"].get("teachers", {})
    distill_rows = "\n".join(
        f"| {name} | {_cos(m['summary_cos'])} | {_cos(m['features_cos'])} |" for name, m in teachers.items()
    )
    text = table(results) + "\n\n" + vision_table(results)
    markdown = f"""# radio-vlm demo results

{text}

Scores in 0..100 on {config["data"]["num_test"]} questions per benchmark (VQAv2 and TextVQA: VQA accuracy;
GQA: exact match; POPE: accuracy). "blind" is the same LLaVA trained and evaluated with every image blanked.
Image tokens: {results["tokens_per_image"]["mean"]:.1f} per test image at long edge
{config["llava"]["long_edge"]} px (a 336 px CLIP: 576).

The vision rows are `radio-vlm eval` on DIR/data/vision (vision_eval/report.md): the distilled student
and the same architecture untrained (the distillation's starting weights); agreement compares each model
driving the teacher's head (CLIP text tower, SAM decoder) with the teacher itself.

Distillation (held-out cosine similarity of the student's heads with each teacher):

| teacher | summary_cos | features_cos |
|---|---:|---:|
{distill_rows}
"""
    _write_report(out, results, timings, text, markdown)


def _write_report(out: Path, results: dict, timings: dict, text: str, markdown: str) -> None:
    """results.json and results.md (`markdown` + the wall time) in `out`; the table `text` on the console."""
    (out / "results.json").write_text(json.dumps(results, indent=1))
    stage_times = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in timings.items())
    wall = f"wall time {results['wall_seconds']:.0f}s ({stage_times})"
    (out / "results.md").write_text(f"{markdown}\n{wall[0].upper()}{wall[1:]}. Figure: results.png.\n")
    print("\n" + text)
    print(f"\n{wall}\nwrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}", flush=True)


def side_by_side_table(results: dict) -> str:
    """The token-budget variant's scores as a Markdown table: one column per side, the change last-vs-first."""
    names = list(results["sides"])
    first, last = results["sides"][names[0]], results["sides"][names[-1]]
    rows = [
        "| benchmark | " + " | ".join(names) + " | change |",
        "|---|" + "---:|" * (len(names) + 1),
        "| image tokens per test image | "
        + " | ".join(f"{results['sides'][n]['tokens_per_image']:.1f}" for n in names)
        + f" | {last['tokens_per_image'] - first['tokens_per_image']:+.1f} |",
    ]
    for benchmark in BENCHMARKS:
        scores = [results["sides"][n]["benchmarks"][benchmark] for n in names]
        change = last["benchmarks"][benchmark] - first["benchmarks"][benchmark]
        rows.append(f"| {benchmark} | " + " | ".join(f"{v:.1f}" for v in scores) + f" | {change:+.1f} |")
    return "\n".join(rows)


def write_side_by_side(out: Path, results: dict, timings: dict, config: dict, runs: dict) -> None:
    """The token-budget variant's report: print the table; write results.json, results.md, results.png."""
    write_figure(out / "results.png", runs, out / "distill", None)
    sides = "; ".join(
        f"{name}: `radio-llava train` flags {side['settings']}" for name, side in results["sides"].items()
    )
    text = side_by_side_table(results)
    markdown = f"""# radio-vlm demo results: token budget

{text}

Scores in 0..100 on {config["data"]["num_test"]} questions per benchmark (VQAv2 and TextVQA: VQA accuracy;
GQA: exact match; POPE: accuracy), one LLaVA per column, trained and evaluated identically but for its image
size and token merge ({sides}). "change" is the last column minus the first.
"""
    _write_report(out, results, timings, text, markdown)
