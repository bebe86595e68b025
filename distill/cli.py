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
}


def main(argv: list[str] | None = None) -> int:
    return run_subcommands("radio-distill", "Multi-teacher distillation of RADIO.", SUBCOMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
