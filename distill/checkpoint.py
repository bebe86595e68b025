"""Atomic periodic checkpoints of a run, and finding the one to resume from.

Layout under `<run>/checkpoints/`:

    step-00000040/engine/...        DeepSpeed: model, optimizer (each rank's ZeRO partition), scheduler
    step-00000040/student.safetensors   the student's weights alone (for `radio-distill export`)
    step-00000040/trainer_state.json    step, data position and anything else the loop needs
    latest                              the name of the newest complete checkpoint

Every rank writes into `.tmp-step-...`; after a barrier rank 0 renames it to `step-...` and then rewrites
`latest` through a temporary file and `os.replace`. Both renames are atomic, so a process killed at any
moment leaves `latest` naming a complete checkpoint. Multi-node runs need a shared file system.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from distill.engine import Engine

CHECKPOINTS = "checkpoints"
STUDENT_FILE = "student.safetensors"
STATE_FILE = "trainer_state.json"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    engine: Engine,
    student_state: dict[str, torch.Tensor],
    trainer_state: dict,
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` atomically and keep the newest `keep`; returns its directory. Every rank
    calls it (each writes its ZeRO partition); rank 0 writes the rest and renames."""
    root = Path(run_dir) / CHECKPOINTS
    name, is_main = f"step-{step:08d}", engine.collectives.is_main
    tmp, final = root / f".tmp-{name}", root / name
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a killed save
        tmp.mkdir(parents=True)
    engine.collectives.barrier()
    engine.save(tmp, client_state={"trainer_state": trainer_state})
    if is_main:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in student_state.items()}, str(tmp / STUDENT_FILE)
        )
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=1))
    engine.collectives.barrier()
    if is_main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer = root / ".latest.tmp"
        pointer.write_text(name)
        os.replace(pointer, root / "latest")
        for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    engine.collectives.barrier()
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of `run_dir`, or None when there is none."""
    pointer = Path(run_dir) / CHECKPOINTS / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"{pointer} names {path.name}, which is missing or incomplete; delete {pointer}"
        )
    return path


def load_checkpoint(path: str | Path, engine: Engine) -> dict:
    """Restore the engine (model, optimizer, scheduler) from checkpoint `path`; returns the trainer state."""
    client_state = engine.load(Path(path))
    return client_state["trainer_state"]
