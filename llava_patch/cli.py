"""`radio-llava` command line."""

from __future__ import annotations

import sys

from radio_vlm.cli import run_subcommands

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "score": ("llava_patch.eval.score", "Score answers as the official vqav2/textvqa/gqa/pope scorers do."),
    "merge": ("llava_patch.eval.merge", "Concatenate chunked answer files in question order."),
    "textvqa-no-ocr": (
        "llava_patch.eval.textvqa",
        "TextVQA questions without OCR tokens (lmms-eval's prompt) from LLaVA's OCR question file.",
    ),
    "generate": ("llava_patch.eval.generate", "Answer a LLaVA question file (greedy, chunked, resumable)."),
    "train": ("llava_patch.train", "LLaVA-1.5 training with RADIO: --stage pretrain | finetune | lora."),
    "merge-lora": ("llava_patch.merge_lora", "Merge a LoRA run's adapter into a full RADIO-LLaVA model."),
    "convert": ("llava_patch.convert", "Convert LLaVA-1.5 checkpoints: original LLaVA <-> transformers."),
    "export": (
        "llava_patch.export",
        "A run as a folder for AutoProcessor / pipeline(); --remote-code: loads without radio_vlm.",
    ),
}


def main(argv: list[str] | None = None) -> int:
    return run_subcommands("radio-llava", "RADIO as the LLaVA-1.5 vision tower.", SUBCOMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
