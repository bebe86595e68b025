"""torchrun worker for test_partition.py, and the helpers the test's single-process reference shares.

`python partition_grad_worker.py OUT` under torchrun: one micro-step of the partitioned run of
configs/distill/tiny_partitioned.yaml; rank 0 saves the engine's reduced gradients (what DeepSpeed's
optimizer would apply) to OUT, and the end-of-run evaluation of the (unchanged) student, which every rank
computes on its share of the held-out images with only its own group's teachers loaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from distill.batches import build_sources, sample_item
from distill.config import DistillConfig, load_config
from distill.data import DistillDataset, DistillView, collate_distill
from distill.losses import DistillLoss, build_balancer, teacher_terms
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
    balancer = build_balancer("naive", teacher_terms(config.teachers, specs)[0])
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


def full_grads(engine) -> dict[str, torch.Tensor]:
    """Every parameter's full (reduced across ranks) gradient, after `backward` and before `step`."""
    from deepspeed.utils import safe_get_full_grad

    grads = {}
    for name, param in engine.module.named_parameters():
        grad = safe_get_full_grad(param)
        if grad is not None:
            grads[name] = grad.detach().float().cpu().clone()
    return grads


def main(out: str) -> None:
    from distill.engine import Engine, init_distributed
    from distill.evaluate import EvalContext, evaluate
    from distill.student import SPECTRAL_SCALE_SUFFIX

    config = load_config(CONFIG, OVERRIDES)
    comm = init_distributed("gloo")
    module, teachers = build_module(config)
    engine = Engine(module, config, SPECTRAL_SCALE_SUFFIX, comm)
    engine.train(False)  # no CPE randomness: this test is about the gradient scaling
    plan = RankPlan(config.groups, comm.rank, comm.world_size, "fixed", config.train.seed)
    losses = []
    for assignment in plan.assignments(0):
        images, targets = group_batch(config, plan, assignment, teachers)
        losses.append(assignment.scale * engine(images, targets).total)
    engine.backward(sum(losses))
    grads = full_grads(engine)

    own = {t for a in plan.assignments(0) for t in config.groups[a.group].teachers}
    _, held_out = build_sources(config.data, config.train.seed)
    context = EvalContext(module.student, {t: teachers[t] for t in own}, config, plan, held_out,
                          module.loss.balancer, comm.device, collectives=comm)  # fmt: skip
    metrics = evaluate(context)
    if comm.rank == 0:
        torch.save({"grads": grads, "world": comm.world_size, "assignments": len(losses), "teachers": sorted(own),
                    "metrics": metrics}, out)  # fmt: skip
    comm.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
