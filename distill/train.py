"""`radio-distill train`: multi-teacher distillation of a RADIO student, top to bottom.

build (student, teachers) -> freeze (teachers, logged) -> load (resume) -> data -> engine -> loop -> save.

    train(load_config("configs/distill/tiny.yaml"), "runs/tiny")
    torchrun --nproc_per_node 8 -m distill train --config configs/distill/radio_vit_h_stage2.yaml --output-dir runs/h2

Each rank runs the teacher group(s) `distill.partition` gives it; the loss of a group is scaled so the
global update is the intended weighted sum. Every `train.log_every` steps rank 0 writes one JSON line to
`<output-dir>/metrics.jsonl` (step, loss, lr, per-teacher losses and cosines, images/s, share of step time
in teachers and the step-time breakdown); every `train.save_every` steps an atomic checkpoint. The end:
`<output-dir>/student/` (RadioWithAdaptors folder) and `<output-dir>/final_metrics.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import signal
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from distill.batches import GroupBatches, ShardBatches, build_sources
from distill.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from distill.config import DistillConfig, load_config, save_config
from distill.engine import Engine, init_distributed
from distill.evaluate import evaluate_student, format_table, write_metrics
from distill.losses import DistillLoss, LossOutput, PhiSBalancer, build_balancer, loss_terms
from distill.partition import RankPlan
from distill.student import SPECTRAL_SCALE_SUFFIX, build_student, exportable_student, sample_vitdet
from distill.teachers import TeacherOutput, get_teacher_spec, load_teacher
from radio_vlm import RadioWithAdaptors

logger = logging.getLogger("distill")
METRICS = "metrics.jsonl"
PHI_S_FILE = "phi_s.safetensors"
# Test hook: SIGKILL this process right after optimizer step N (before any checkpoint of that step).
KILL_AT_STEP_ENV = "RADIO_DISTILL_KILL_AT_STEP"


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


def _all_reduce_sum(values: list[float]) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()


class MetricsLog:
    """Sums per-step statistics between log lines and reduces them over ranks when a line is written."""

    def __init__(self, terms: list[str], path: Path, is_main: bool) -> None:
        self.terms, self.path, self.is_main = terms, path, is_main
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.start = time.perf_counter()
        self.steps = 0

    def add_step(
        self,
        outputs: list[tuple[float, LossOutput]],
        world: int,
        micro_steps: int,
        images: int,
        skipped: int,
        times: dict,
    ) -> None:
        """outputs: (loss scale, LossOutput) of every group run in this step's `micro_steps` micro-batches;
        skipped: unreadable images this rank replaced in the step's batches."""
        self.steps += 1
        self.sums["skipped_images"] += skipped
        # the step's loss: the weighted global objective, averaged over micro-batches
        self.sums["loss"] += sum(scale * out.total.item() for scale, out in outputs) / (world * micro_steps)
        self.sums["images"] += images
        for key, value in times.items():
            self.sums[f"time/{key}"] += value
        for _, out in outputs:
            for term, value in out.components.items():
                self.sums[f"loss/{term}"] += value.item()
                self.sums[f"count/{term}"] += 1
                self.sums[f"cos/{term}"] += out.cosine[term].item()

    def write(self, step: int, lr: float, grad_norm: float | None, world: int, bar: tqdm | None) -> dict:
        keys = [
            "loss",
            "images",
            "skipped_images",
            *(f"time/{k}" for k in ("data", "teachers", "student", "optimizer", "step")),
        ]
        keys += [f"{kind}/{term}" for term in self.terms for kind in ("loss", "cos", "count")]
        totals = dict(zip(keys, _all_reduce_sum([self.sums[k] for k in keys])))
        elapsed = time.perf_counter() - self.start
        step_time = totals["time/step"] / world
        record = {"step": step, "loss": totals["loss"] / self.steps, "lr": lr,
                  "images_per_s": totals["images"] / elapsed,
                  "skipped_images": int(totals["skipped_images"]),
                  "teacher_time_share": totals["time/teachers"] / max(totals["time/step"], 1e-12),
                  **{f"{k}_s": totals[f"time/{k}"] / world / self.steps for k in ("data", "teachers", "student", "optimizer")},
                  "step_s": step_time / self.steps, "grad_norm": grad_norm}  # fmt: skip
        for term in self.terms:
            count = totals[f"count/{term}"]
            if count:
                record[f"loss/{term}"] = totals[f"loss/{term}"] / count
                record[f"cos/{term}"] = totals[f"cos/{term}"] / count
        if self.is_main:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if bar is not None:
                cosines = " ".join(
                    f"{t}={record[f'cos/{t}']:.3f}" for t in self.terms if f"cos/{t}" in record
                )
                bar.set_postfix_str(
                    f"loss={record['loss']:.4f} img/s={record['images_per_s']:.1f} cos {cosines}"
                )
        self.reset()
        return record


def _gather_data_positions(state: dict) -> dict:
    """{rank: that rank's data position} (empty for map-style data, whose position is the step)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return {"0": state} if state else {}
    states = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, state)
    return {str(r): s for r, s in enumerate(states) if s}


def _truncate_metrics(path: Path, after_step: int) -> None:
    """Drop lines logged after the checkpoint we resume from (they will be logged again)."""
    if path.is_file():
        lines = [
            line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= after_step
        ]
        path.write_text("".join(line + "\n" for line in lines))


def _fit_phi_s(
    balancer: PhiSBalancer, plan: RankPlan, batches: GroupBatches, teachers, config, device
) -> None:
    """PHI-S statistics from the teacher outputs of the first `loss.phi_s_batches` steps' batches."""
    for step in range(config.loss.phi_s_batches):
        for assignment in plan.assignments(step):
            batch = batches.next_batch(assignment.group).to(device)
            for name in config.groups[assignment.group].teachers:
                target = teachers[name](batch.teacher_images[name])
                balancer.observe(name, target.summary, target.features)
    balancer.fit()


def train(config: DistillConfig, output_dir: str | Path, resume: bool = False) -> dict:
    """Run the distillation described by `config` into `output_dir`; returns the final metrics."""
    output_dir = Path(output_dir)
    rank, world, _ = init_distributed(config.distributed.backend)
    is_main = rank == 0
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, format="%(message)s")
    device = torch.device(config.train.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "config.yaml")

    # ---- build: teacher specs, student, rank plan
    specs = {
        t.name: get_teacher_spec(t.name, **({"source": t.source} if t.source else {}))
        for t in config.teachers
    }
    student = build_student(config, specs)
    plan = RankPlan(config.groups, rank, world, config.distributed.group_sampling, config.train.seed)
    logger.info(plan.describe())

    # ---- freeze: teachers are frozen and in inference mode; only the groups this rank runs are loaded
    needed = sorted({t for k in plan.possible_groups() for t in config.groups[k].teachers})
    teachers = {name: load_teacher(specs[name], device) for name in needed}
    for name, teacher in teachers.items():
        frozen = sum(p.numel() for p in teacher.parameters())
        logger.info(f"teacher {name}: {frozen:,} params frozen ({teacher.dtype}, {specs[name].resolution}px)")
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    logger.info(f"student: {trainable:,} trainable params, heads {sorted(student.adaptors)}")

    # ---- loss and engine
    weights = {
        t.name: (t.summary_weight if specs[t.name].summary else 0.0, t.feature_weight)
        for t in config.teachers
    }
    dims = {f"{n}/summary": s.summary_dim for n, s in specs.items() if s.summary_dim}
    dims |= {f"{n}/features": s.feature_dim for n, s in specs.items()}
    balancer = build_balancer(config.loss.balancer, loss_terms(weights), dims, config.loss.adaloss_momentum)
    module = DistillModule(student, DistillLoss(balancer), {t.name: t.head for t in config.teachers})
    engine = Engine(module, config, SPECTRAL_SCALE_SUFFIX)
    student, balancer = engine.module.student, engine.module.loss.balancer

    # ---- load: resume from the newest complete checkpoint
    start_step = 0
    checkpoint = latest_checkpoint(output_dir) if resume else None
    if checkpoint is not None:
        trainer_state = load_checkpoint(checkpoint, engine)
        start_step = trainer_state["step"]
        logger.info(f"resumed from {checkpoint} at step {start_step}")
    if is_main:
        if checkpoint is None:
            (output_dir / METRICS).unlink(missing_ok=True)
        _truncate_metrics(output_dir / METRICS, start_step)

    # ---- data
    train_source, held_out = build_sources(config.data, config.train.seed)
    gas, max_steps = config.distributed.grad_accum, config.train.max_steps
    if isinstance(balancer, PhiSBalancer) and checkpoint is None:
        if config.data.source == "webdataset":
            probe = ShardBatches(train_source, config.groups, specs, plan, config.data, config.train.seed)
        else:
            probe = GroupBatches(train_source, config.groups, specs, plan, config.data, config.train.seed, 0,
                                 config.loss.phi_s_batches, 1)  # fmt: skip
        _fit_phi_s(balancer, plan, probe, teachers, config, device)
        if is_main:
            balancer.save_statistics(str(output_dir / PHI_S_FILE))
    if config.data.source == "webdataset":
        position = trainer_state.get("data", {}).get(str(rank)) if checkpoint is not None else None
        batches = ShardBatches(
            train_source, config.groups, specs, plan, config.data, config.train.seed, position
        )
    else:
        batches = GroupBatches(train_source, config.groups, specs, plan, config.data, config.train.seed,
                               start_step, max_steps, gas)  # fmt: skip

    # ---- loop
    terms = sorted(loss_terms(weights))
    log = MetricsLog(terms, output_dir / METRICS, is_main)
    bar = tqdm(
        range(start_step, max_steps), initial=start_step, total=max_steps, desc="distill", disable=not is_main
    )
    engine.train()
    for step in bar:
        torch.manual_seed(step_seed(config.train.seed, step, rank))
        window_rng = random.Random(step_seed(config.train.seed, step, rank))
        times = dict.fromkeys(("data", "teachers", "student", "optimizer"), 0.0)
        step_start, outputs, images, skipped = time.perf_counter(), [], 0, 0
        for _ in range(gas):
            micro = []
            for assignment in plan.assignments(step):
                group = config.groups[assignment.group]
                t0 = time.perf_counter()
                batch = batches.next_batch(assignment.group).to(device)
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
        log.add_step(outputs, world, gas, images, skipped, times)
        done = step + 1
        if done % config.train.log_every == 0 or done == max_steps:
            log.write(done, engine.lr, engine.grad_norm(), world, bar)
        if (config.train.save_every and done % config.train.save_every == 0) or done == max_steps:
            state = {"step": done, "data": _gather_data_positions(batches.state())}
            save_checkpoint(
                output_dir, done, engine, student.state_dict(), state, is_main, config.train.keep_checkpoints
            )
        if os.environ.get(KILL_AT_STEP_ENV) == str(done):
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()

    # ---- save: the exported student and the held-out evaluation (rank 0)
    metrics = {}
    if is_main:
        final = exportable_student(student)
        final.save_pretrained(output_dir / "student")
        eval_teachers = {
            t.name: teachers.get(t.name) or load_teacher(specs[t.name], device) for t in config.teachers
        }
        metrics = evaluate_student(student, eval_teachers, config, held_out, balancer, device, engine.dtype)
        write_metrics(metrics, output_dir)
        print(format_table(metrics))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
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
