"""Run under torchrun by test_train.py: a ZeRO-2 pretrain, then a ZeRO-3 finetune from its projector, in one
process per rank (one launch per world size keeps the suite fast)."""

from __future__ import annotations

import sys
from pathlib import Path

from llava_patch.cli import main

REPO = Path(__file__).resolve().parents[2]

if __name__ == "__main__":
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    common = [
        "--vision-tower",
        "tiny-radio",
        "--llm",
        "tiny-llama",
        "--image-folder",
        str(data / "images"),
        "--long-edge",
        "64",
        "--max-steps",
        "2",
        "--global-batch-size",
        "4",
        "--per-device-batch-size",
        "2",
        "--dataloader-num-workers",
        "0",
        "--learning-rate",
        "1e-3",
    ]
    main(
        [
            "train",
            "--stage",
            "pretrain",
            "--data",
            str(data / "pretrain.json"),
            "--output-dir",
            str(out / "zero2"),
            "--deepspeed",
            str(REPO / "scripts/zero2.json"),
            *common,
        ]
    )
    main(
        [
            "train",
            "--stage",
            "finetune",
            "--data",
            str(data / "finetune.json"),
            "--output-dir",
            str(out / "zero3"),
            "--deepspeed",
            str(REPO / "scripts/zero3.json"),
            "--pretrained-projector",
            str(out / "zero2"),
            *common,
        ]
    )
