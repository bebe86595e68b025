"""What every protocol shares: loading the model under test, the command-line flags for it, and the run record.

Every `radio-vlm eval <protocol>` writes OUT/metrics.json:

    {"protocol": "knn" | "zero-shot" | "seg-probe" | "sam",
     "model": "/abs/path/of/the/model/folder", "name": "model label in reports", "random_init": bool,
     "adaptor": str | null, "settings": {...the protocol's options...},
     "metrics": {...the protocol's numbers, percentages in 0..100...},
     "skipped_images": {"count": int, "files": [[path, reason], ...]},  # unreadable images, not fatal
     "world_size": int, "wall_seconds": float}

and prints a table of its metrics; `radio-vlm eval report` reads these files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

from ..features import load_model_and_processor
from .distributed import EvalContext

METRICS_FILE = "metrics.json"
# At most this many unreadable files are listed by name in metrics.json (all are counted).
MAX_LISTED_SKIPS = 100


def load_model(path: str | Path, device: torch.device, random_init: bool = False, seed: int = 0):
    """The RadioWithAdaptors of a model folder, in eval mode on `device`.

    `random_init`: the same architecture with fresh random weights (the model class's own initialisation,
    deterministic given `seed`): the untrained baseline a trained model should beat. A distillation student
    built with `train.seed = seed` starts from exactly these weights.
    """
    model, _ = load_model_and_processor(path, device)
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = type(model)(model.config)
        model = model.to(device).eval()
    return model


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on `device` when `enabled` (the official scripts' --amp), else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def add_model_flags(parser: argparse.ArgumentParser, adaptor_help: str, batch_size: int = 64) -> None:
    """Flags shared by every protocol: the model, its head, where to write, device, precision, batch size."""
    parser.add_argument("--model", required=True, help="RadioWithAdaptors folder (config.json + weights)")
    parser.add_argument("--adaptor", default=None, help=adaptor_help)
    parser.add_argument("--out", required=True, help="run folder: metrics.json and the protocol's files")
    parser.add_argument(
        "--name", default=None, help="label of this model in reports (default: the model folder's name)"
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="evaluate the model's architecture with fresh random weights (the untrained baseline)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-init and of any sampling")
    parser.add_argument(
        "--device", default=None, help="torch device (default: this rank's GPU when available, else cpu)"
    )
    parser.add_argument("--amp", action="store_true", help="run the model under bf16 autocast")
    parser.add_argument(
        "--batch-size", type=int, default=batch_size, help=f"images per forward (default {batch_size})"
    )
    parser.add_argument("--workers", type=int, default=4, help="image-decoding worker processes (default 4)")


class Run:
    """One evaluation run: its context, model, output folder and the record it writes at the end."""

    def __init__(self, protocol: str, args: argparse.Namespace) -> None:
        self.protocol, self.args, self.start = protocol, args, time.perf_counter()
        self.ctx = EvalContext.from_env(args.device)
        self.out = Path(args.out)
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.model = load_model(args.model, self.ctx.device, args.random_init, args.seed)
        if args.adaptor is not None and args.adaptor not in self.model.adaptors:
            raise ValueError(
                f"{args.model}: the model has no adaptor {args.adaptor!r}; it has "
                f"{sorted(self.model.adaptors) or 'none'} (--adaptor)"
            )
        self.skipped: list[tuple[str, str]] = []

    @property
    def name(self) -> str:
        base = self.args.name or Path(self.args.model).resolve().name
        return f"{base} (random init)" if self.args.random_init and not self.args.name else base

    def autocast(self):
        return autocast(self.ctx.device, self.args.amp)

    def finish(self, settings: dict, metrics: dict, rows: list[tuple[str, str]]) -> dict:
        """Gather the skipped files of every rank, write metrics.json (rank 0), print the table; returns the record."""
        skipped = sorted({tuple(s) for part in self.ctx.gather_objects(self.skipped) for s in part})
        record = {
            "protocol": self.protocol,
            "model": str(Path(self.args.model).resolve()),
            "name": self.name,
            "random_init": bool(self.args.random_init),
            "adaptor": self.args.adaptor,
            "settings": settings,
            "metrics": metrics,
            "skipped_images": {"count": len(skipped), "files": [list(s) for s in skipped[:MAX_LISTED_SKIPS]]},
            "world_size": self.ctx.world,
            "wall_seconds": time.perf_counter() - self.start,
        }
        if self.ctx.is_main:
            (self.out / METRICS_FILE).write_text(json.dumps(record, indent=1))
            print(format_table(f"{self.protocol}: {self.name}", rows))
            note = f"; {len(skipped)} unreadable images skipped" if skipped else ""
            print(f"wrote {self.out / METRICS_FILE} ({record['wall_seconds']:.1f}s{note})", flush=True)
        return record


def format_table(title: str, rows: list[tuple[str, str]]) -> str:
    """A two-column text table: `title`, then one `name  value` line per row."""
    width = max([len(name) for name, _ in rows] + [6])
    lines = [title, "-" * max(len(title), width + 12)]
    lines += [f"{name:<{width}}  {value:>10}" for name, value in rows]
    return "\n".join(lines)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
