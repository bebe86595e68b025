"""`radio-vlm convert SRC OUT`: an official checkpoint -> a folder for `AutoModel.from_pretrained`."""

from __future__ import annotations

import argparse

from .official import convert_official, save_converted


def _names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="official .pth.tar checkpoint or Hugging Face remote-code folder")
    parser.add_argument("out", help="output folder for RadioWithAdaptors.from_pretrained / AutoModel")
    parser.add_argument(
        "--adaptors",
        type=_names,
        default=None,
        help="comma-separated adaptor heads to keep, e.g. siglip2-g,sam3 (default: every head in the weights)",
    )
    parser.add_argument(
        "--align-corners",
        action="store_true",
        help="reproduce the position interpolation of checkpoints exported before 2025-06-28",
    )
    parser.add_argument(
        "--version",
        default=None,
        help="the official release, e.g. radio_v2.5-h (see `radio-vlm models`), for metadata the checkpoint lacks",
    )
    parser.add_argument("--export-code", action="store_true", help="also write model code + auto_map")
    parser.add_argument(
        "--constructor",
        default=None,
        help="JSON of the builder's keyword arguments for a custom args.model (E-RADIO, DINOv2 students; "
        "default: <checkpoint name>_constructor.json beside the checkpoint)",
    )
    parser.add_argument(
        "--inert-arg",
        type=_names,
        action="extend",
        default=[],
        metavar="KEY[,KEY...]",
        help="accept these checkpoint settings unknown to the converter as not changing the model (KEY of args, "
        "model_kwargs.KEY, teachers.KEY, config.KEY of an HF config.json); only after checking that the official "
        "code ignores them at inference",
    )


def run(args: argparse.Namespace) -> int:
    model = convert_official(
        args.src,
        align_corners=args.align_corners,
        version=args.version,
        constructor=args.constructor,
        adaptors=args.adaptors,
        inert_args=args.inert_arg,
    )
    out = save_converted(model, args.out, export_code=args.export_code)
    config = model.config
    print(
        f"converted {args.src} -> {out} ({config.version or 'unknown release'}; adaptors: "
        f"{', '.join(config.adaptors) or 'none'})"
    )
    return 0
