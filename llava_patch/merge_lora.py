"""`radio-llava merge-lora RUN_OR_CHECKPOINT OUT`: a LoRA run's adapter merged into a full RADIO-LLaVA model.

The base is rebuilt exactly as the run built it (its `radio_llava_run.json`: vision tower, LLM, feature
sources, pretrained projector), the adapter (LoRA weights and the trained projector) is applied and merged,
and OUT is an ordinary model folder for `llava_patch.model.load_pretrained`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers import LlavaForConditionalGeneration

from .checkpoints import read_run_config
from .processing import RadioLlavaProcessor


def merge_lora(adapter_dir: str | Path) -> tuple[LlavaForConditionalGeneration, RadioLlavaProcessor]:
    """(merged model, processor) from a LoRA run folder or one of its checkpoint-N folders."""
    from peft import PeftModel

    from .train import build_for_stage

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{adapter_dir}: no adapter_config.json; pass a `--stage lora` run or checkpoint folder"
        )
    settings = {**read_run_config(adapter_dir), "stage": "base"}
    base, processor = build_for_stage(settings)  # "base": no stage-specific trainable parts
    model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    model.requires_grad_(False)
    return model.eval(), processor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "adapter_dir", help="a `radio-llava train --stage lora` output or checkpoint-N folder"
    )
    parser.add_argument("output_dir", help="where the merged model and processor are written")


def run(args: argparse.Namespace) -> int:
    model, processor = merge_lora(args.adapter_dir)
    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    print(f"merged {args.adapter_dir} -> {args.output_dir}")
    return 0
