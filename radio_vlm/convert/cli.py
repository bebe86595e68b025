"""`radio-vlm convert SRC OUT`: an official checkpoint -> a folder for `AutoModel.from_pretrained`."""

from __future__ import annotations

import argparse

from .official import convert_official, save_converted


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="official .pth.tar checkpoint or Hugging Face remote-code folder")
    parser.add_argument("out", help="output folder for RadioWithAdaptors.from_pretrained / AutoModel")
    parser.add_argument(
        "--align-corners",
        action="store_true",
        help="reproduce the position interpolation of checkpoints exported before 2025-06-28",
    )
    parser.add_argument(
        "--version", default=None, help="official version string, e.g. radio_v2.5-h (metadata)"
    )
    parser.add_argument("--export-code", action="store_true", help="also write model code + auto_map")
    parser.add_argument(
        "--constructor",
        default=None,
        help="E-RADIO only: JSON of the official ERADIO(...) keyword arguments for a custom args.model "
        "(default: <checkpoint name>_constructor.json beside the checkpoint)",
    )


def run(args: argparse.Namespace) -> int:
    model = convert_official(
        args.src, align_corners=args.align_corners, version=args.version, constructor=args.constructor
    )
    out = save_converted(model, args.out, export_code=args.export_code)
    print(f"converted {args.src} -> {out} (adaptors: {', '.join(model.config.adaptors) or 'none'})")
    return 0
