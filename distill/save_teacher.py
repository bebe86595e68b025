"""`radio-distill save-teacher NAME... --out DIR`: tiny twin teachers' whole models (DIR/NAME), for `radio-vlm eval`.

Tiny twins are built from their seed and exist nowhere on disk; evaluating a student distilled from them
needs the same teacher: the open_clip text tower for `eval zero-shot --text-tower DIR/NAME`, SAM's prompt
encoder and mask decoder for `eval sam --sam-checkpoint DIR/NAME`. The model written is exactly the one
`load_teacher(NAME)` runs (same seed), in its library's own format:

- open_clip: open_clip_config.json + open_clip_model.safetensors (loads with open_clip's "local-dir:");
- segment_anything: sam_config.json + model.safetensors (radio_vlm.evaluation.sam.load_sam);
- transformers: save_pretrained.

Real teachers are on disk already (their `source`): pass that to `radio-vlm eval` directly.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distill.teachers import TeacherSpec, build_teacher_model, get_teacher_spec
from radio_vlm.evaluation.sam import save_sam


def save_teacher(spec: TeacherSpec | str, out: str | Path) -> Path:
    """Write the tiny twin `spec` (or its registered name) to the folder `out`; returns `out`."""
    if isinstance(spec, str):
        spec = get_teacher_spec(spec)
    if not spec.random_init:
        where = repr(spec.source) if spec.source else "its checkpoint (the teacher's source)"
        raise ValueError(
            f"teacher {spec.name!r} is a real teacher: pass {where} to radio-vlm eval directly "
            "(save-teacher writes tiny twins, which exist only as a seed)"
        )
    out = Path(out)
    model = build_teacher_model(spec)
    if spec.loader == "segment_anything":
        return save_sam(model, spec.config, out)
    out.mkdir(parents=True, exist_ok=True)
    if spec.loader == "open_clip":
        import open_clip
        from safetensors.torch import save_file

        model_cfg = {**open_clip.get_model_config(spec.arch), **dict(spec.config)}
        preprocess = {"size": spec.resolution, "mean": list(spec.mean), "std": list(spec.std)}
        config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess}
        (out / "open_clip_config.json").write_text(json.dumps(config, indent=1))
        weights = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(out / "open_clip_model.safetensors"))
    else:
        model.save_pretrained(out)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", help="registered tiny teachers, e.g. tiny_clip tiny_sam")
    parser.add_argument("--out", required=True, help="folder to write each teacher to, as OUT/NAME")


def run(args: argparse.Namespace) -> int:
    for name in args.names:
        print(f"wrote teacher {name} to {save_teacher(name, Path(args.out) / name)}")
    return 0
