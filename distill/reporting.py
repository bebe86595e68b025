"""Where a run's numbers go: `metrics.jsonl` always, TensorBoard and Weights & Biases on request.

`MetricsLog` sums per-step statistics on every rank and, every `train.log_every` steps, reduces them over
ranks (the engine's collectives) into one record: step, loss, lr, grad_norm, images/s, per-term losses
and cosines (`loss/<teacher>/<summary|features>`, `cos/...`), skipped images and the step-time breakdown.
Rank 0's `Reporter` appends the record to `<run>/metrics.jsonl` and writes the same scalars to every
backend of `train.report_to`:

- `tensorboard`: `<run>/tensorboard/` event files (`tensorboard --logdir <run>/tensorboard`); a run purges
  the events of the steps it logs again (those after the checkpoint it resumes from);
- `wandb`: offline unless `WANDB_MODE` says otherwise (`wandb sync <run>/wandb/offline-run-*` uploads);
  project `WANDB_PROJECT` (default radio-distill), the run directory's name, the resolved config; one run
  id per run directory, resumed with it.

The end-of-run evaluation goes to the backends as `eval/...` scalars at the last step (and to
`final_metrics.json`, written by the trainer).
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from distill.config import ConfigError
from distill.engine import Collectives
from distill.losses import LossOutput

METRICS = "metrics.jsonl"
WANDB_ID = "wandb_id.txt"
_TIMES = ("data", "teachers", "student", "optimizer")


def check_backends(report_to: list[str]) -> None:
    """A clear error for each `train.report_to` backend whose package is missing (before any training)."""
    for backend in report_to:
        try:
            importlib.import_module(backend)
        except ImportError:
            raise ConfigError(
                f"train.report_to: {backend!r} needs the {backend} package: pip install 'radio-vlm[{backend}]' "
                f"(or remove it from train.report_to)"
            ) from None


class Reporter:
    """Rank 0's writer of metrics.jsonl and of the `report_to` backends."""

    def __init__(self, run_dir: Path, report_to: list[str], config: dict, start_step: int) -> None:
        self.path = run_dir / METRICS
        if start_step == 0:
            self.path.unlink(missing_ok=True)
        elif self.path.is_file():  # drop lines logged after the checkpoint: they are logged again
            lines = [
                line
                for line in self.path.read_text().splitlines()
                if line and json.loads(line)["step"] <= start_step
            ]
            self.path.write_text("".join(line + "\n" for line in lines))
        self.tensorboard = self.wandb = None
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(
                run_dir / "tensorboard",
                purge_step=start_step + 1,  # drops what a killed run logged later
            )
        if "wandb" in report_to:
            import wandb

            id_file = run_dir / WANDB_ID
            if start_step == 0 or not id_file.is_file():  # a new run, else the one resumed
                id_file.write_text(secrets.token_hex(6))  # W&B run ids: [a-z0-9]
            self.wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "radio-distill"), name=run_dir.name, dir=run_dir,
                id=id_file.read_text().strip(), resume="allow", config=config,
                mode=os.environ.get("WANDB_MODE", "offline"),
            )  # fmt: skip

    def log(self, step: int, scalars: dict[str, float | None], to_jsonl: bool = True) -> None:
        """`scalars` at `step` to metrics.jsonl (with `to_jsonl`) and every backend (None values skipped)."""
        if to_jsonl:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **scalars}) + "\n")
        values = {
            k: float(v) for k, v in scalars.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, step)
            self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


class MetricsLog:
    """Sums per-step statistics between log lines and reduces them over ranks when a line is written."""

    def __init__(self, terms: list[str], collectives: Collectives, reporter: Reporter | None) -> None:
        self.terms, self.collectives, self.reporter = terms, collectives, reporter
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.start = time.perf_counter()
        self.steps = 0

    def add_step(
        self,
        outputs: list[tuple[float, LossOutput]],
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
        world = self.collectives.world_size
        self.sums["loss"] += sum(scale * out.total.item() for scale, out in outputs) / (world * micro_steps)
        self.sums["images"] += images
        for key, value in times.items():
            self.sums[f"time/{key}"] += value
        for _, out in outputs:
            for term, value in out.components.items():
                self.sums[f"loss/{term}"] += value.item()
                self.sums[f"count/{term}"] += 1
                self.sums[f"cos/{term}"] += out.cosine[term].item()

    def write(self, step: int, lr: float, grad_norm: float | None, bar: tqdm | None) -> dict:
        """Reduce over ranks (every rank calls it) and, on rank 0, log one record; returns the record."""
        keys = ["loss", "images", "skipped_images", *(f"time/{k}" for k in (*_TIMES, "step"))]
        keys += [f"{kind}/{term}" for term in self.terms for kind in ("loss", "cos", "count")]
        local = torch.tensor([self.sums[k] for k in keys], dtype=torch.float64)
        totals = dict(zip(keys, self.collectives.all_reduce_sum(local).tolist()))
        elapsed, world = time.perf_counter() - self.start, self.collectives.world_size
        record = {"loss": totals["loss"] / self.steps, "lr": lr,
                  "images_per_s": totals["images"] / elapsed,
                  "skipped_images": int(totals["skipped_images"]),
                  "teacher_time_share": totals["time/teachers"] / max(totals["time/step"], 1e-12),
                  **{f"{k}_s": totals[f"time/{k}"] / world / self.steps for k in _TIMES},
                  "step_s": totals["time/step"] / world / self.steps, "grad_norm": grad_norm}  # fmt: skip
        for term in self.terms:
            count = totals[f"count/{term}"]
            if count:
                record[f"loss/{term}"] = totals[f"loss/{term}"] / count
                record[f"cos/{term}"] = totals[f"cos/{term}"] / count
        if self.reporter is not None:
            self.reporter.log(step, record)
            if bar is not None:
                cosines = " ".join(
                    f"{t}={record[f'cos/{t}']:.3f}" for t in self.terms if f"cos/{t}" in record
                )
                bar.set_postfix_str(
                    f"loss={record['loss']:.4f} img/s={record['images_per_s']:.1f} cos {cosines}"
                )
        self.reset()
        return {"step": step, **record}
