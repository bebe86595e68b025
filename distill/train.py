"""`radio-distill train`: multi-teacher distillation of a RADIO student, top to bottom.

data sources -> build (student, teachers) -> freeze (teachers, logged) -> engine -> load (resume) -> batches
-> loop -> evaluate -> save.

    train(load_config("configs/distill/tiny.yaml"), "runs/tiny")
    torchrun --nproc_per_node 8 -m distill train --config configs/distill/radio_vit_h_stage2.yaml --output-dir runs/h2

Each rank runs the teacher group(s) `distill.partition` gives it; the loss of a group is scaled so the
global update is the intended weighted sum. Every `train.log_every` steps the ranks reduce their
statistics and rank 0 writes one JSON line to `<output-dir>/metrics.jsonl` (and to TensorBoard / W&B with
`train.report_to`, `distill.reporting`); every `train.save_every` steps an atomic checkpoint. The end:
every rank evaluates its share of the held-out images (`distill.evaluate`), then rank 0 writes
`<output-dir>/student/` (RadioWithAdaptors folder, teacher-space heads) and `final_metrics.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from distill.batches import GroupBatches, ShardBatches, build_sources
from distill.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from distill.config import ConfigError, DistillConfig, config_to_dict, load_config, save_config
from distill.engine import Collectives, Engine, init_distributed
from distill.evaluate import METRICS, EvalContext, evaluate, format_table, scalars, write_metrics
from distill.export import init_state
from distill.losses import PHI_S_FILE, DistillLoss, LossOutput, PhiSBalancer, build_balancer, teacher_terms
from distill.partition import RankPlan
from distill.reporting import MetricsLog, Reporter, check_backends
from distill.student import (
    SPECTRAL_SCALE_SUFFIX,
    build_student,
    exportable_student,
    sample_vitdet,
    vitdet_windows,
)
from distill.teachers import TeacherOutput, get_teacher_spec, load_teacher
from distill.vision_eval import VisionEval
from radio_vlm import RadioWithAdaptors

logger = logging.getLogger("distill")
DATA_INDEX = "data_index"  # folder sources' file lists, written once per run (distill.index)


class DistillModule(nn.Module):
    """What the engine owns: the student and the loss (whose balancer may hold learned weights/state)."""

    def __init__(self, student: RadioWithAdaptors, loss: DistillLoss, heads: dict[str, str]) -> None:
        super().__init__()
        self.student, self.loss, self.heads = student, loss, heads

    def forward(self, images: torch.Tensor, targets: dict[str, TeacherOutput]) -> LossOutput:
        """images (B, 3, S, S) in [0, 1]; targets {teacher: TeacherOutput} -> LossOutput of these teachers."""
        out = self.student(images)
        grid = (images.shape[-2] // self.student.patch_size, images.shape[-1] // self.student.patch_size)
        result = self.loss({t: out.adaptors[self.heads[t]] for t in targets}, targets, grid)
        # ZeRO reduces gradients in buckets that every rank must fill with the same parameters in the same
        # order, but a rank's group may leave some heads unused. A zero-weighted term through every head
        # output gives each head a (zero) gradient along the same graph on every rank.
        outputs = [x for o in out.adaptors.values() for x in (o.summary, o.features) if x is not None]
        touch = sum(x.sum() for x in outputs) + sum(p.sum() for p in self.loss.parameters())
        return dataclasses.replace(result, total=result.total + 0.0 * touch)


def step_seed(seed: int, step: int, rank: int) -> int:
    """Augmentation RNG of one step on one rank (CPE crops, position dropout, ViTDet windows): a function
    of (seed, step, rank), so a resumed run draws the same numbers without saving generator state."""
    return random.Random(f"{seed}/{step}/{rank}").getrandbits(63)


def _fit_phi_s(balancer: PhiSBalancer, plan: RankPlan, batches: GroupBatches | ShardBatches, teachers,
              config: DistillConfig, collectives: Collectives) -> None:  # fmt: skip
    """PHI-S statistics from the teacher outputs of the first steps' batches, until every term has seen
    `loss.phi_s_samples_per_dim` x D vectors over all ranks (patch tokens count)."""
    terms = sorted(balancer.dims)
    needed = torch.tensor([math.ceil(config.loss.phi_s_samples_per_dim * balancer.dims[t]) for t in terms])
    step = 0
    while True:
        seen = collectives.all_reduce_sum(
            torch.tensor([balancer.observed()[t] for t in terms], dtype=torch.float64)
        )
        missing = {t for t, n, goal in zip(terms, seen.tolist(), needed.tolist()) if n < goal}
        if not missing:
            break
        for assignment in plan.assignments(step):
            batch = batches.next_batch(assignment.group).to(collectives.device)
            for name in config.groups[assignment.group].teachers:
                if {f"{name}/summary", f"{name}/features"} & missing:
                    target = teachers[name](batch.teacher_images[name])
                    keep = {k: v if f"{name}/{k}" in missing else None for k, v in vars(target).items()}
                    balancer.observe(name, keep["summary"], keep["features"])
        step += 1
    balancer.fit(collectives.all_reduce_sum)
    logger.info(
        f"PHI-S statistics from {step} steps' batches: "
        + ", ".join(f"{t} {int(n):,}" for t, n in zip(terms, seen.tolist()))
    )


def train(config: DistillConfig, output_dir: str | Path, resume: bool = False) -> dict:
    """Run the distillation described by `config` into `output_dir`; returns the final metrics."""
    output_dir = Path(output_dir)
    comm = init_distributed(config.distributed.backend, config.train.device)
    logging.basicConfig(level=logging.INFO if comm.is_main else logging.WARNING, format="%(message)s")
    check_backends(config.train.report_to)  # on every rank: a missing package stops them all
    if comm.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "config.yaml")
    logger.info(f"process group: {comm.backend}, {comm.world_size} rank(s), device {comm.device}, "
                f"precision {config.distributed.precision}")  # fmt: skip

    # ---- data sources first: a bad data index stops every rank before any teacher loads
    train_source, held_out = build_sources(
        config.data, config.train.seed, output_dir / DATA_INDEX, comm.on_main
    )

    # ---- build: teacher specs, student, rank plan
    specs = {
        t.name: get_teacher_spec(t.name, **({"source": t.source} if t.source else {}))
        for t in config.teachers
    }
    start_from = init_state(config.student.init_from) if config.student.init_from else None
    student = build_student(config, specs, start_from)
    for group in config.groups:  # every rank checks every group: an error stops all ranks, not some
        vitdet_windows(group, student.patch_size)
    plan = RankPlan(
        config.groups, comm.rank, comm.world_size, config.distributed.group_sampling, config.train.seed
    )
    logger.info(plan.describe())

    # ---- freeze: teachers are frozen and in inference mode; only the groups this rank runs are loaded
    needed = sorted({t for k in plan.possible_groups() for t in config.groups[k].teachers})
    teachers = {name: load_teacher(specs[name], comm.device) for name in needed}
    for name, teacher in teachers.items():
        frozen = sum(p.numel() for p in teacher.parameters())
        logger.info(f"teacher {name}: {frozen:,} params frozen ({teacher.dtype}, {specs[name].resolution}px)")
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    logger.info(f"student: {trainable:,} trainable params, heads {sorted(student.adaptors)}")

    # ---- loss and engine
    weights, dims = teacher_terms(config.teachers, specs)
    balancer = build_balancer(
        config.loss.balancer, weights, dims, config.loss.adaloss_momentum, comm.all_reduce_sum
    )
    heads = {t.name: t.head for t in config.teachers}
    engine = Engine(DistillModule(student, DistillLoss(balancer), heads), config, SPECTRAL_SCALE_SUFFIX, comm)
    student, balancer = engine.module.student, engine.module.loss.balancer

    # ---- load: resume from the newest complete checkpoint
    start_step, trainer_state = 0, {}
    checkpoint = latest_checkpoint(output_dir) if resume else None
    if checkpoint is not None:
        trainer_state = load_checkpoint(checkpoint, engine)
        start_step = trainer_state["step"]
        logger.info(f"resumed from {checkpoint} at step {start_step}")

    # ---- batches
    gas, max_steps = config.distributed.grad_accum, config.train.max_steps

    def batches_from(step: int, steps: int):
        if config.data.source != "webdataset":
            return GroupBatches(train_source, config.groups, specs, plan, config.data, config.train.seed,
                                step, steps, gas)  # fmt: skip
        if trainer_state and trainer_state.get("world_size") != comm.world_size:
            raise ConfigError(
                f"{checkpoint}: written by {trainer_state.get('world_size')} ranks, resumed with {comm.world_size}; "
                f"WebDataset positions are per rank: resume with the same number of ranks"
            )
        position = trainer_state.get("data", {}).get(str(comm.rank)) if step else None
        return ShardBatches(
            train_source, config.groups, specs, plan, config.data, config.train.seed, position
        )

    if isinstance(balancer, PhiSBalancer) and checkpoint is None:
        _fit_phi_s(balancer, plan, batches_from(0, sys.maxsize), teachers, config, comm)
        if comm.is_main:
            balancer.save_statistics(str(output_dir / PHI_S_FILE))
    batches = batches_from(start_step, max_steps)

    # ---- loop
    reporter = (
        Reporter(output_dir, config.train.report_to, config_to_dict(config), start_step)
        if comm.is_main
        else None
    )
    log = MetricsLog(sorted(weights), comm, reporter)
    context = EvalContext(
        student, teachers, config, plan, held_out, balancer, comm.device, engine.dtype, comm
    )
    vision = VisionEval(config, specs)  # the `eval:` protocols, during training and in the final metrics
    metrics_at_end = {**METRICS, "vision": vision} if vision else METRICS
    bar = tqdm(
        range(start_step, max_steps),
        initial=start_step,
        total=max_steps,
        desc="distill",
        disable=not comm.is_main,
    )
    engine.train()
    for step in bar:
        torch.manual_seed(step_seed(config.train.seed, step, comm.rank))
        window_rng = random.Random(step_seed(config.train.seed, step, comm.rank))
        times = dict.fromkeys(("data", "teachers", "student", "optimizer"), 0.0)
        step_start, outputs, images, skipped = time.perf_counter(), [], 0, 0
        for _ in range(gas):
            micro = []
            for assignment in plan.assignments(step):
                group = config.groups[assignment.group]
                t0 = time.perf_counter()
                batch = batches.next_batch(assignment.group).to(comm.device)
                t1 = time.perf_counter()
                targets = {name: teachers[name](batch.teacher_images[name]) for name in group.teachers}
                t2 = time.perf_counter()
                sample_vitdet(student, group, window_rng)
                out = engine(batch.student_images.to(engine.dtype), targets)
                micro.append((assignment.scale, out))
                times["data"] += t1 - t0
                times["teachers"] += t2 - t1
                times["student"] += time.perf_counter() - t2
                images += len(batch)
                skipped += batch.num_skipped
            t3 = time.perf_counter()
            engine.backward(sum(scale * out.total for scale, out in micro))
            t4 = time.perf_counter()
            engine.step()
            times["student"] += t4 - t3
            times["optimizer"] += time.perf_counter() - t4
            outputs += micro
        times["step"] = time.perf_counter() - step_start
        log.add_step(outputs, gas, images, skipped, times)
        done = step + 1
        if done % config.train.log_every == 0 or done == max_steps:
            log.write(done, engine.lr, engine.grad_norm(), bar)
        if vision.due(done, max_steps):  # every rank takes part; rank 0 logs
            results = evaluate(context, {"vision": vision})
            if comm.is_main:
                reporter.log(done, scalars(results))
        if (config.train.save_every and done % config.train.save_every == 0) or done == max_steps:
            positions = comm.all_gather_object(batches.state())
            state = {"step": done, "world_size": comm.world_size,
                     "data": {str(r): p for r, p in enumerate(positions) if p}}  # fmt: skip
            save_checkpoint(
                output_dir, done, engine, student.state_dict(), state, config.train.keep_checkpoints
            )
    bar.close()

    # ---- evaluate (every rank, its share of the held-out images) and save (rank 0)
    metrics = evaluate(context, metrics_at_end)
    if comm.is_main:
        phi_s = balancer.standardizer if isinstance(balancer, PhiSBalancer) else None
        exportable_student(student, phi_s, heads).save_pretrained(output_dir / "student")
        write_metrics(metrics, output_dir)
        reporter.log(max_steps, scalars(metrics), to_jsonl=False)
        reporter.close()
        print(format_table(metrics))
    comm.barrier()
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (see configs/distill/)")
    parser.add_argument(
        "--output-dir", required=True, help="run directory: config.yaml, metrics, checkpoints"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --output-dir"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.max_steps=20 (repeatable)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    train(config, args.output_dir, resume=args.resume)
    return 0
