"""`radio-vlm` command line. Each subcommand lives in its own module, imported only when it runs.

A subcommand module exposes `add_arguments(parser)` and `run(args) -> int | None`. `distill` and
`llava_patch` build their own commands with `run_subcommands`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Errors that carry an instruction for the user (bad input, missing file); anything else is a bug and
# keeps its traceback.
USER_ERRORS = (ValueError, OSError, KeyError)
TRACEBACK_ENV = "RADIO_VLM_TRACEBACK"

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("radio_vlm.convert.cli", "convert an official RADIO .pth.tar or HF folder to a model folder"),
    "models": ("radio_vlm.convert.releases", "NVIDIA's released RADIO checkpoints and whether they convert"),
    "export": (
        "radio_vlm.export",
        "re-save a model folder with its code, for trust_remote_code without radio_vlm",
    ),
    "demo-data": ("radio_vlm.demo.data", "write the synthetic benchmark (LLaVA + official eval formats)"),
    "features": ("radio_vlm.features", "summary and dense features of images, saved as safetensors"),
    "visualize": ("radio_vlm.visualize", "PCA picture of an image's dense features (AM-RADIO Figure 1)"),
    "eval": (
        "radio_vlm.evaluation.cli",
        "benchmark a vision model: k-NN, zero-shot, linear-probe segmentation, SAM drop-in, report",
    ),
    "demo": (
        "radio_vlm.demo.driver",
        "the whole pipeline on a CPU: demo data, distil, LLaVA pretrain + fine-tune, 4 benchmarks vs blind",
    ),
}


def run_subcommands(
    prog: str, description: str, subcommands: dict[str, tuple[str, str]], argv: list[str] | None = None
) -> int:
    """Parse `argv` as `prog <subcommand> ...` and run the chosen subcommand's module.

    From the command line (`argv` None), a user error prints one line `prog command: error: ...` and
    returns 2 (set RADIO_VLM_TRACEBACK=1 for the traceback); called with `argv`, errors propagate.
    """
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(subcommands) + "}")
    chosen = argv[0] if argv and argv[0] in subcommands else None
    for name, (module, help_text) in subcommands.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # only the chosen command pays for its imports
            importlib.import_module(module).add_arguments(sp)
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(subcommands[args.command][0]).run(args) or 0)
    except USER_ERRORS as err:
        if not from_command_line or os.environ.get(TRACEBACK_ENV):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"{prog} {args.command}: error: {message}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    return run_subcommands("radio-vlm", "Load, convert and run RADIO models.", SUBCOMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
