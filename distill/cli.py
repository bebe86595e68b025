"""`radio-distill` command line (also `python -m distill`)."""

from __future__ import annotations

import sys

from radio_vlm.cli import run_subcommands

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "distill.train",
        "Distil a RADIO student from teachers (DeepSpeed; torchrun/deepspeed for many ranks).",
    ),
    "export": ("distill.export", "Write a run's student as a RadioWithAdaptors folder (with adaptor heads)."),
    "save-teacher": (
        "distill.save_teacher",
        "Write a tiny twin teacher's whole model (text tower, SAM decoder) for radio-vlm eval.",
    ),
}


def _drop_local_rank(argv: list[str]) -> list[str]:
    """The `deepspeed` launcher inserts `--local_rank=N` before the subcommand; LOCAL_RANK (also set by it)
    is what the engine reads, so the flag is dropped wherever it appears."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--local_rank", "--local-rank"):
            skip = True
        elif not arg.startswith(("--local_rank=", "--local-rank=")):
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    """From the command line (`argv` None) a user error prints one line and exits 2; with `argv`, raises."""
    if argv is None:
        sys.argv[1:] = _drop_local_rank(sys.argv[1:])
    else:
        argv = _drop_local_rank(list(argv))
    return run_subcommands("radio-distill", "Multi-teacher distillation of RADIO.", SUBCOMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
