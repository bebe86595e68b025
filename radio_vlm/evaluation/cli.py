"""`radio-vlm eval {knn,zero-shot,seg-probe,sam,report}`: the paper's benchmark of a vision model.

Each protocol writes OUT/metrics.json and prints a table; `report` lays several runs side by side.
Start any protocol under `torchrun --nproc_per_node N -m radio_vlm.cli eval ...` to split it over ranks.
"""

from __future__ import annotations

import argparse
import importlib

# protocol -> (module, one-line help)
PROTOCOLS: dict[str, tuple[str, str]] = {
    "knn": ("radio_vlm.evaluation.knn", "k-NN top-1/top-5 on summary vectors (ImageFolder train/val)"),
    "zero-shot": (
        "radio_vlm.evaluation.zero_shot",
        "zero-shot top-1/top-5 through a CLIP/SigLIP adaptor and the teacher's text tower",
    ),
    "seg-probe": (
        "radio_vlm.evaluation.seg_probe",
        "linear-probe semantic segmentation mIoU on frozen features (ADE20k / VOC layouts)",
    ),
    "sam": (
        "radio_vlm.evaluation.sam",
        "COCO box-prompted instance mIoU with SAM's decoder on the sam adaptor",
    ),
    "report": ("radio_vlm.evaluation.report", "several runs' metrics side by side (markdown + PNG)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="protocol", required=True, metavar="{" + ",".join(PROTOCOLS) + "}")
    for name, (module, help_text) in PROTOCOLS.items():
        importlib.import_module(module).add_arguments(
            sub.add_parser(name, help=help_text, description=help_text)
        )


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(PROTOCOLS[args.protocol][0]).run(args) or 0)
