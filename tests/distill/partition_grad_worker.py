"""torchrun worker for test_partition.py, and the helpers the test's single-process reference shares.

`python partition_grad_worker.py OUT` under torchrun: one micro-step of the partitioned run of
configs/distill/tiny_partitioned.yaml; rank 0 saves the engine's reduced gradients (what DeepSpeed's
optimizer would apply) to OUT.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from distill.batches import build_sources, sample_item
from distill.config import DistillConfig, load_config
from distill.data import DistillDataset, DistillView, collate_distill
from distill.losses import DistillLoss, build_balancer, loss_terms
from distill.partition import Assignment, RankPlan
from distill.student import build_student
from distill.teachers import get_teacher_spec, load_teacher
from distill.train import DistillModule

CONFIG = Path(__file__).resolve().parents[2] / "configs/distill/tiny_partitioned.yaml"
OVERRIDES = ["groups.0.batch_size=3", "groups.1.batch_size=2", "groups.0.weight=0.7", "groups.1.weight=0.3",
             "groups.1.vitdet_window_sizes=[]", "data.num_images=16"]  # fmt: skip


def build_module(config: DistillConfig):
    """(DistillModule, {teacher: Teacher}) exactly as `distill.train` builds them."""
    specs = {t.name: get_teacher_spec(t.name) for t in config.teachers}
    weights = {
        t.name: (t.summary_weight if specs[t.name].summary else 0.0, t.feature_weight)
        for t in config.teachers
    }
    balancer = build_balancer("naive", loss_terms(weights))
    module = DistillModule(
        build_student(config, specs), DistillLoss(balancer), {t.name: t.head for t in config.teachers}
    )
    return module, {name: load_teacher(spec, "cpu") for name, spec in specs.items()}


def group_batch(config: DistillConfig, plan: RankPlan, assignment: Assignment, teachers):
    """(student images, {teacher: TeacherOutput}) of `assignment` at micro-step 0."""
    group = config.groups[assignment.group]
    source, _ = build_sources(config.data, config.train.seed)
    view = DistillView(group.resolution, [teachers[t].spec for t in group.teachers])
    dataset = DistillDataset(source, view, seed=config.train.seed)
    items = [sample_item(n, len(source), config.train.seed) for n in plan.sample_indices(0, assignment)]
    batch = collate_distill([dataset[item] for item in items])
    return batch.student_images, {t: teachers[t](batch.teacher_images[t]) for t in group.teachers}


def main(out: str) -> None:
    from distill.engine import Engine, init_distributed
    from distill.student import SPECTRAL_SCALE_SUFFIX

    config = load_config(CONFIG, OVERRIDES)
    rank, world, _ = init_distributed("gloo")
    module, teachers = build_module(config)
    engine = Engine(module, config, SPECTRAL_SCALE_SUFFIX)
    engine.train(False)  # no CPE randomness: this test is about the gradient scaling
    plan = RankPlan(config.groups, rank, world, "fixed", config.train.seed)
    losses = []
    for assignment in plan.assignments(0):
        images, targets = group_batch(config, plan, assignment, teachers)
        losses.append(assignment.scale * engine(images, targets).total)
    engine.backward(sum(losses))
    grads = engine.full_grads()
    if rank == 0:
        torch.save({"grads": grads, "world": world, "assignments": len(losses)}, out)
    torch.distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
