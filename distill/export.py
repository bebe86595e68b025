"""`radio-distill export RUN_DIR OUT`: the student of a run as a RadioWithAdaptors folder (with its heads).

Reads the run's resolved `config.yaml` and the student weights of its newest checkpoint, bakes spectral
reparametrisation into plain weights, and writes `save_pretrained` output, so that
`AutoModel.from_pretrained(OUT)` (after `import radio_vlm`) gives the trainer's numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safetensors.torch import load_file

from distill.checkpoint import STUDENT_FILE, latest_checkpoint
from distill.config import load_config
from distill.student import build_student, exportable_student
from distill.teachers import get_teacher_spec
from radio_vlm import RadioWithAdaptors


def load_run_student(run_dir: str | Path) -> RadioWithAdaptors:
    """The student of the newest checkpoint of `run_dir`, as trained (spectral parametrisation kept)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(
            f"{run_dir} has no config.yaml: pass the --output-dir of a `radio-distill train` run"
        )
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(
            f"{run_dir} has no checkpoint yet (checkpoints/latest); train longer or set train.save_every"
        )
    config = load_config(run_dir / "config.yaml")
    config.student.init_from = None  # the checkpoint replaces every weight anyway
    specs = {
        t.name: get_teacher_spec(t.name, **({"source": t.source} if t.source else {}))
        for t in config.teachers
    }
    student = build_student(config, specs)
    student.load_state_dict(load_file(str(checkpoint / STUDENT_FILE)))
    return student


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    """Write the run's student to `out` (a RadioWithAdaptors folder); returns `out`."""
    exportable_student(load_run_student(run_dir)).save_pretrained(out)
    return Path(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="output directory of `radio-distill train`")
    parser.add_argument("out", help="folder to write the student to (config.json + model.safetensors)")


def run(args: argparse.Namespace) -> int:
    out = export_run(args.run_dir, args.out)
    print(
        f"exported the student to {out}; load with AutoModel.from_pretrained({str(out)!r}) after `import radio_vlm`"
    )
    return 0
