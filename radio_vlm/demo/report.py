"""What `radio-vlm demo` reports: the student check, one table, results.json / results.md and a figure.

results.json (the schema of issue 6):

    {"benchmarks": {"gqa": {"score": float, "blind_score": float}, "textvqa": {...}, "pope": {...},
                    "vqav2": {...}},                       # 0..100; POPE: accuracy over its 3 categories
     "tokens_per_image": {"mean": float, "clip_336": 576}, # mean over the test images, at the demo's long edge
     "distill": {...},                                     # the distillation run's final_metrics.json
     "wall_seconds": float}
"""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image
import torch

from ..features import encode_images, load_model_and_processor
from ..models.image_io import load_image
from ..visualize import pca_picture

BENCHMARKS = ("gqa", "textvqa", "pope", "vqav2")
MARGIN = 25.0  # points a benchmark must score above its blind baseline (issue 6, "Budget")
# The test image shown in the PCA picture (demo_data names; a landscape image with three shapes at seed 0)
PCA_IMAGE = "gqa/images/n100000.jpg"


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
    images = sorted(p for p in eval_dir.rglob("*") if p.suffix in (".jpg", ".png"))
    tokens = []
    for path in images:
        with PIL.Image.open(path) as opened:  # reads the header only
            width, height = opened.size
        tokens.append(processor.num_image_tokens(height, width, long_edge=long_edge))
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
        "num_images": len(images),
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


def write_figure(path: Path, runs: dict[str, Path], distill_run: Path, pca: Path) -> None:
    """results.png: distillation loss, LLaVA pretrain and fine-tune losses (image vs blind), PCA picture."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    metrics = [json.loads(line) for line in (distill_run / "metrics.jsonl").read_text().splitlines() if line]
    axes[0].plot([m["step"] for m in metrics], [m["loss"] for m in metrics], color="tab:green")
    axes[0].set_title("distillation loss (student vs teachers)")
    for ax, stage in zip(axes[1:3], ("pretrain", "finetune")):
        for side, color in (("image", "tab:blue"), ("blind", "tab:gray")):
            steps, losses = _trainer_losses(runs[side] / stage)
            ax.plot(steps, losses, color=color, label=side, marker="." if len(steps) < 3 else None)
        ax.set_title(f"LLaVA {stage} loss")
        ax.set_yscale("log")  # the first steps' loss would flatten the rest
        ax.legend()
    for ax in axes[:3]:
        ax.set_xlabel("step")
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
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_figure(out / "results.png", runs, distill_run, Path(check["picture"]))
    stage_times = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in timings.items())
    teachers = results["distill"].get("teachers", {})
    distill_rows = "\n".join(
        f"| {name} | {_cos(m['summary_cos'])} | {_cos(m['features_cos'])} |" for name, m in teachers.items()
    )
    text = table(results)
    markdown = f"""# radio-vlm demo results

{text}

Scores in 0..100 on {config["data"]["num_test"]} questions per benchmark (VQAv2 and TextVQA: VQA accuracy;
GQA: exact match; POPE: accuracy). "blind" is the same LLaVA trained and evaluated with every image blanked.
Image tokens: {results["tokens_per_image"]["mean"]:.1f} per test image at long edge
{config["llava"]["long_edge"]} px (a 336 px CLIP: 576).

Distillation (held-out cosine similarity of the student's heads with each teacher):

| teacher | summary_cos | features_cos |
|---|---:|---:|
{distill_rows}

Wall time {results["wall_seconds"]:.0f}s ({stage_times}). Figure: results.png.
"""
    (out / "results.md").write_text(markdown)
    print("\n" + text)
    print(
        f"\nwall time {results['wall_seconds']:.0f}s ({stage_times})\n"
        f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}",
        flush=True,
    )
