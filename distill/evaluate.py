"""End-of-run evaluation: how well the student's adaptor heads reproduce each teacher on held-out images.

For every teacher: the mean cosine similarity of the student's summary head with the teacher's summary
(None for teachers without one) and of its feature head with the teacher's features, per token after
bringing both grids to the larger size (as the feature loss, AM-RADIO section 4). Each teacher is
evaluated at the student resolution of the first group that contains it. With PHI-S the student's heads
predict standardised targets: they are mapped back to teacher space before comparing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from distill.batches import held_out_batches
from distill.config import DistillConfig
from distill.losses import LossBalancer, PhiSBalancer, feature_loss, summary_loss
from distill.teachers import Teacher
from radio_vlm import RadioWithAdaptors

FINAL_METRICS = "final_metrics.json"


@torch.no_grad()
def evaluate_student(
    student: RadioWithAdaptors,
    teachers: dict[str, Teacher],
    config: DistillConfig,
    held_out,
    balancer: LossBalancer,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """{"teachers": {name: {"summary_cos": float | None, "features_cos": float}}} over the held-out set."""
    was_training = student.training
    student.eval()
    student.set_vitdet(None)
    results = {}
    for teacher_config in config.teachers:
        name, teacher = teacher_config.name, teachers[teacher_config.name]
        resolution = next(g.resolution for g in config.groups if name in g.teachers)
        sums = {"summary": 0.0, "features": 0.0}
        count = 0
        for batch in held_out_batches(
            held_out, resolution, [teacher.spec], config.train.eval_batch_size, config.train.seed
        ):
            batch = batch.to(device)
            target = teacher(batch.teacher_images[name])
            out = student(batch.student_images.to(dtype)).adaptors[teacher_config.head]
            grid = (resolution // student.patch_size,) * 2
            summary, features = out.summary, out.features
            if isinstance(balancer, PhiSBalancer):
                summary = None if summary is None else balancer.denormalize(f"{name}/summary", summary)
                features = balancer.denormalize(f"{name}/features", features)
            n = len(batch)
            if summary is not None and target.summary is not None:
                sums["summary"] += summary_loss(summary, target.summary)[1].item() * n
            sums["features"] += feature_loss(features, target.features, grid)[1].item() * n
            count += n
        has_summary = teacher.spec.summary is not None
        results[name] = {
            "summary_cos": sums["summary"] / count if has_summary else None,
            "features_cos": sums["features"] / count,
        }
    student.train(was_training)
    return {"teachers": results}


def format_table(metrics: dict) -> str:
    rows = [f"{'teacher':<24} {'summary_cos':>12} {'features_cos':>13}"]
    for name, m in metrics["teachers"].items():
        summary = "-" if m["summary_cos"] is None else f"{m['summary_cos']:.4f}"
        rows.append(f"{name:<24} {summary:>12} {m['features_cos']:>13.4f}")
    return "\n".join(rows)


def write_metrics(metrics: dict, output_dir: str | Path) -> Path:
    path = Path(output_dir) / FINAL_METRICS
    path.write_text(json.dumps(metrics, indent=1))
    return path
