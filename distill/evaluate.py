"""End-of-run evaluation of the student on held-out images, on every rank at once.

A metric is one function `metric(ctx: EvalContext) -> dict` registered in `METRICS` under the key its
result takes in `final_metrics.json` (and, flattened, in the run's TensorBoard / W&B logs). Every rank calls
every metric in the same order. A metric works on this rank's share of the held-out images
(`ctx.share(teacher)`), with the teachers this rank already holds for training, and combines the shares
with `ctx.all_reduce_sum` / `ctx.all_gather_object` (the engine's collectives), so no rank loads a teacher it
did not train with and none waits in a collective while another one computes.

`teacher_cosines` (key "teachers"): for every teacher, the mean cosine similarity of the student's summary
head with the teacher's summary (None for teachers without one) and of its feature head with the teacher's
features, per token after bringing both grids to the larger size (as the feature loss, AM-RADIO section 4).
Each teacher is evaluated at the student resolution of the first group that contains it. With PHI-S the
student's heads predict standardised targets: they are mapped back to teacher space before comparing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distill.batches import held_out_batches
from distill.config import DistillConfig
from distill.data import DistillBatch, ImageSource
from distill.engine import Collectives
from distill.losses import LossBalancer, PhiSBalancer, feature_loss, summary_loss
from distill.partition import RankPlan
from distill.teachers import Teacher
from radio_vlm import RadioWithAdaptors

FINAL_METRICS = "final_metrics.json"


@dataclass
class EvalContext:
    """What a metric may use. `teachers` are this rank's; `collectives` None means a single process."""

    student: RadioWithAdaptors
    teachers: dict[str, Teacher]
    config: DistillConfig
    plan: RankPlan
    held_out: ImageSource
    balancer: LossBalancer
    device: torch.device
    dtype: torch.dtype = torch.float32
    collectives: Collectives | None = None

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.collectives is None else self.collectives.all_reduce_sum(tensor)

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj] if self.collectives is None else self.collectives.all_gather_object(obj)

    def resolution(self, teacher: str) -> int:
        """The student resolution `teacher` is evaluated at: that of the first group containing it."""
        return next(g.resolution for g in self.config.groups if teacher in g.teachers)

    def share(self, teacher: str) -> list[int]:
        """Held-out image indices this rank evaluates for `teacher`: every n-th of the n ranks holding it."""
        ranks = self.plan.ranks_holding(teacher)
        if self.plan.rank not in ranks:
            return []
        return list(range(ranks.index(self.plan.rank), len(self.held_out), len(ranks)))

    def batches(self, teacher: str) -> Iterator[DistillBatch]:
        """This rank's share of the held-out images for `teacher`, on the device."""
        spec, train = self.teachers[teacher].spec, self.config.train
        share = self.share(teacher)
        for batch in held_out_batches(self.held_out, self.resolution(teacher), [spec], train.eval_batch_size,
                                      train.seed, share):  # fmt: skip
            yield batch.to(self.device)

    def predict(self, teacher: str, images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The student's (summary (B, C) | None, features (B, T, D)) for `teacher`, in the teacher's space."""
        head = self.config.teacher(teacher).head
        out = self.student(images.to(self.dtype)).adaptors[head]
        summary, features = out.summary, out.features
        if isinstance(self.balancer, PhiSBalancer):
            summary = None if summary is None else self.balancer.denormalize(f"{teacher}/summary", summary)
            features = self.balancer.denormalize(f"{teacher}/features", features)
        return summary, features


def teacher_cosines(ctx: EvalContext) -> dict:
    """{teacher: {"summary_cos": float | None, "features_cos": float}} over the whole held-out set."""
    names = [t.name for t in ctx.config.teachers]
    # per teacher: summary cos * n, images with a summary, features cos * n, images
    sums = torch.zeros(len(names), 4, dtype=torch.float64)
    for i, name in enumerate(names):
        if name not in ctx.teachers:
            continue
        grid = (ctx.resolution(name) // ctx.student.patch_size,) * 2
        for batch in ctx.batches(name):
            target = ctx.teachers[name](batch.teacher_images[name])
            summary, features = ctx.predict(name, batch.student_images)
            n = len(batch)
            if summary is not None and target.summary is not None:
                sums[i, 0] += summary_loss(summary, target.summary)[1].item() * n
                sums[i, 1] += n
            sums[i, 2] += feature_loss(features, target.features, grid)[1].item() * n
            sums[i, 3] += n
    sums = ctx.all_reduce_sum(sums).tolist()
    return {
        name: {
            "summary_cos": summary / with_summary if with_summary else None,
            "features_cos": features / count,
        }
        for name, (summary, with_summary, features, count) in zip(names, sums)
    }


# key in final_metrics.json -> metric; add one function here to evaluate something more
METRICS: dict[str, Callable[[EvalContext], dict]] = {"teachers": teacher_cosines}


@torch.no_grad()
def evaluate(ctx: EvalContext, metrics: dict[str, Callable[[EvalContext], dict]] | None = None) -> dict:
    """Every metric of `metrics` (default `METRICS`) on the student in eval mode, ViTDet off; every rank
    gets the same results."""
    was_training = ctx.student.training
    ctx.student.eval()
    ctx.student.set_vitdet(None)
    try:
        return {key: metric(ctx) for key, metric in (metrics or METRICS).items()}
    finally:
        ctx.student.train(was_training)


def evaluate_student(
    student: RadioWithAdaptors,
    teachers: dict[str, Teacher],
    config: DistillConfig,
    held_out: ImageSource,
    balancer: LossBalancer,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """The run's evaluation in one process with every teacher (e.g. of an exported student)."""
    plan = RankPlan(config.groups, 0, 1, config.distributed.group_sampling, config.train.seed)
    return evaluate(EvalContext(student, teachers, config, plan, held_out, balancer, device, dtype))


def scalars(metrics: dict) -> dict[str, float]:
    """`metrics` flattened to {"eval/<key>/<name>/<field>": value} for the training logs (None dropped)."""
    flat: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[prefix] = float(value)

    walk("eval", metrics)
    return flat


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
