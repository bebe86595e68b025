"""`radio-distill export RUN_DIR OUT`: the student of a run as a RadioWithAdaptors folder (with its heads).

Reads the run's resolved `config.yaml` and the student weights of its newest checkpoint, bakes spectral
reparametrisation into plain weights and, for a `balancer: phi_s` run, folds the inverse PHI-S
standardisation into the heads (from the run's `phi_s.safetensors`), and writes `save_pretrained` output,
so that `AutoModel.from_pretrained(OUT)` (after `import radio_vlm`) predicts every teacher in its own space.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

from distill.checkpoint import STUDENT_FILE, latest_checkpoint
from distill.config import DistillConfig, load_config
from distill.losses import PHI_S_FILE, PhiSBalancer, teacher_terms
from distill.phi_s import PhiSStandardizer
from distill.student import build_student, exportable_student
from distill.teachers import TeacherSpec, get_teacher_spec
from radio_vlm import RadioWithAdaptors


def _run(run_dir: Path) -> tuple[DistillConfig, dict[str, TeacherSpec], Path]:
    """(resolved config, teacher specs, newest checkpoint) of a run directory."""
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
    specs = {
        t.name: get_teacher_spec(t.name, **({"source": t.source} if t.source else {}))
        for t in config.teachers
    }
    return config, specs, checkpoint


def load_run_student(run_dir: str | Path) -> RadioWithAdaptors:
    """The student of the newest checkpoint of `run_dir`, as trained (spectral parametrisation kept, and
    predicting PHI-S-standardised targets for a phi_s run)."""
    config, specs, checkpoint = _run(Path(run_dir))
    student = build_student(config, specs)  # the checkpoint replaces every weight, init_from included
    student.load_state_dict(load_file(str(checkpoint / STUDENT_FILE)))
    return student


def run_phi_s(run_dir: str | Path) -> PhiSStandardizer | None:
    """The PHI-S statistics of a `balancer: phi_s` run (None for other balancers)."""
    run_dir = Path(run_dir)
    config, specs, _ = _run(run_dir)
    if config.loss.balancer != "phi_s":
        return None
    weights, dims = teacher_terms(config.teachers, specs)
    balancer = PhiSBalancer(weights, dims)
    balancer.load_statistics(str(run_dir / PHI_S_FILE))
    return balancer.standardizer


def exported_student(run_dir: str | Path) -> RadioWithAdaptors:
    """The run's student as `radio-distill export` writes it (teacher-space heads, plain weights)."""
    config, _, _ = _run(Path(run_dir))
    heads = {t.name: t.head for t in config.teachers}
    return exportable_student(load_run_student(run_dir), run_phi_s(run_dir), heads)


def init_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights to start a student from (`student.init_from`): a RadioWithAdaptors folder, or a run
    directory's exported student."""
    source = Path(path)
    if (source / "config.json").is_file():
        return RadioWithAdaptors.from_pretrained(source).state_dict()
    if (source / "config.yaml").is_file():
        return exported_student(source).state_dict()
    raise FileNotFoundError(
        f"student.init_from: {source} is neither a RadioWithAdaptors folder nor a run directory"
    )


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    """Write the run's student to `out` (a RadioWithAdaptors folder); returns `out`."""
    exported_student(run_dir).save_pretrained(out)
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
