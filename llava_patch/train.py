"""`radio-llava train --stage pretrain|finetune|lora`: LLaVA-1.5's recipe with RADIO on the HF Trainer.

Reads top to bottom: settings, build, load the projector, freeze (logged), data, engine, train, save.
Defaults are LLaVA-1.5's scripts/v1_5 (reference llava.md 2.6): global batch 256 / 128 / 128, lr 1e-3 /
2e-5 / 2e-4 (LoRA projector 2e-5), cosine, warmup 0.03, weight decay 0, 1 epoch, bf16 (on GPUs),
gradient checkpointing, max length 2048. The gradient accumulation is derived from the global batch,
the per-device batch and the world size, so fewer GPUs train the same recipe (LLaVA #360).
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

logger = logging.getLogger("llava_patch.train")


@dataclass(frozen=True)
class StageDefaults:
    template: str  # conversation template (LLaVA --version)
    learning_rate: float
    global_batch_size: int
    per_device_batch_size: int
    group_by_modality_length: bool
    projector_lr: float | None = None  # LLaVA --mm_projector_lr


STAGES = {
    "pretrain": StageDefaults("plain", 1e-3, 256, 32, False),
    "finetune": StageDefaults("vicuna_v1", 2e-5, 128, 16, True),
    "lora": StageDefaults("vicuna_v1", 2e-4, 128, 16, True, projector_lr=2e-5),
}
# LLaVA's finetune_lora.sh: r 128, alpha 256, dropout 0.05, on every linear layer of the LLM
LORA_TARGETS = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--stage", choices=sorted(STAGES), required=True)
    a("--vision-tower", required=True, help="RadioWithAdaptors folder or tiny twin (tiny-radio)")
    a("--llm", required=True, help="LLaMA/Vicuna folder or tiny twin (tiny-llama)")
    a("--data", required=True, help="LLaVA JSON list")
    a("--image-folder", default=None, help="image paths in --data are relative to this folder")
    a("--output-dir", required=True)
    a("--deepspeed", default=None, help="DeepSpeed JSON (scripts/zero2.json, zero3.json, zero3_offload.json)")
    a("--pretrained-projector", default=None, help="mm_projector.bin, or a pretrain run / HF folder")
    a("--template", default=None, help="conversation template (default: plain for pretrain, else vicuna_v1)")
    a(
        "--feature-sources",
        nargs="+",
        default=None,
        help="backbone | layer:<i> | adaptor:<name> (concatenated)",
    )
    a("--output-layernorm", action="store_true", help="LayerNorm on the vision features")
    a("--unfreeze-vision-tower", action="store_true", help="train the RADIO tower too (finetune/lora)")
    a("--long-edge", type=int, default=None, help="image long edge in px (default 432, capped by the tower)")
    a("--max-steps", type=int, default=-1, help="stop after N optimizer steps (default: one epoch)")
    a("--num-train-epochs", type=float, default=1.0)
    a("--learning-rate", type=float, default=None)
    a("--projector-lr", type=float, default=None)
    a("--global-batch-size", type=int, default=None)
    a("--per-device-batch-size", type=int, default=None)
    a("--warmup-ratio", type=float, default=0.03)
    a("--weight-decay", type=float, default=0.0)
    a("--lr-scheduler", default="cosine")
    a("--precision", choices=["bf16", "fp32"], default=None, help="default: bf16 on a GPU, fp32 on CPU")
    a("--no-gradient-checkpointing", action="store_true")
    a("--max-length", type=int, default=2048)
    a("--max-bad-fraction", type=float, default=0.01, help="abort when more of the data set is bad")
    a("--lora-r", type=int, default=128)
    a("--lora-alpha", type=int, default=256)
    a("--lora-dropout", type=float, default=0.05)
    a("--save-steps", type=int, default=24000)
    a("--save-total-limit", type=int, default=1)
    a("--logging-steps", type=int, default=1)
    a("--dataloader-num-workers", type=int, default=4)
    a("--seed", type=int, default=42)
    a("--report-to", default="none")
    a(
        "--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS
    )  # set by the deepspeed launcher


def resolve_settings(args: argparse.Namespace) -> dict:
    """Every setting of the run, stage defaults filled in (written to radio_llava_run.json)."""
    stage = STAGES[args.stage]
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "command", "local_rank")}
    for key in (
        "vision_tower",
        "llm",
        "pretrained_projector",
        "data",
        "image_folder",
        "deepspeed",
        "output_dir",
    ):
        if settings.get(key) and Path(settings[key]).exists():  # merge-lora may run from another folder
            settings[key] = str(Path(settings[key]).resolve())
    for key in ("template", "learning_rate", "global_batch_size", "per_device_batch_size", "projector_lr"):
        if settings.get(key) is None:
            settings[key] = getattr(stage, key)
    settings["group_by_modality_length"] = stage.group_by_modality_length
    if settings["precision"] is None:
        settings["precision"] = (
            "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
        )
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    per_step = settings["per_device_batch_size"] * world_size
    if settings["global_batch_size"] % per_step:
        raise ValueError(
            f"--global-batch-size {settings['global_batch_size']} is not a multiple of per-device batch "
            f"{settings['per_device_batch_size']} x {world_size} ranks"
        )
    settings["gradient_accumulation_steps"] = settings["global_batch_size"] // per_step
    settings["stage_defaults"] = asdict(stage)
    return settings


def build_for_stage(settings: dict):
    """(model, processor) with the stage's trainable parts; the model is a PeftModel for LoRA."""
    from .checkpoints import load_projector
    from .model import build

    model, processor = build(
        settings["vision_tower"],
        settings["llm"],
        feature_sources=settings["feature_sources"],
        output_layernorm=settings["output_layernorm"],
        trainable_vision_tower=settings["unfreeze_vision_tower"],
        long_edge=settings["long_edge"],
        # as LLaVA: bf16 weights under DeepSpeed (its engine keeps fp32 master weights); the Trainer's own
        # bf16 is autocast over fp32 weights
        dtype=torch.bfloat16 if settings["precision"] == "bf16" and settings["deepspeed"] else None,
    )
    # Before the engine partitions anything (ZeRO-3 + a projector load = LLaVA #736).
    if settings["pretrained_projector"]:
        logger.info("projector loaded from %s", load_projector(model, settings["pretrained_projector"]))
    model.config.use_cache = False
    stage = settings["stage"]
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    if stage == "finetune":
        model.model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    if stage != "pretrain" and settings["unfreeze_vision_tower"]:
        model.model.vision_tower.requires_grad_(True)
    if stage == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=settings["lora_r"],
            lora_alpha=settings["lora_alpha"],
            lora_dropout=settings["lora_dropout"],
            target_modules=LORA_TARGETS,
            # saved whole in the adapter, so resume and merge-lora restore them
            modules_to_save=["multi_modal_projector"]
            + (["vision_tower"] if settings["unfreeze_vision_tower"] else []),
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    log_trainable(model)
    return model, processor


def log_trainable(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Log (trainable, total) parameters per part: vision tower, projector, LLM, LoRA."""
    parts = {"vision_tower": "vision_tower", "projector": "multi_modal_projector", "lora": "lora_"}
    counts: dict[str, list[int]] = {name: [0, 0] for name in [*parts, "language_model"]}
    for name, param in model.named_parameters():
        if "original_module" in name:  # peft's frozen copy of a modules_to_save module
            continue
        part = next((p for p, key in parts.items() if key in name), "language_model")
        counts[part][0] += param.numel() if param.requires_grad else 0
        counts[part][1] += param.numel()
    for part, (trainable, total) in counts.items():
        if total:
            state = "trainable" if trainable == total else "frozen" if trainable == 0 else "partly trainable"
            logger.info("%-15s %s: %d of %d parameters train", part, state, trainable, total)
    return {k: tuple(v) for k, v in counts.items()}


# run settings that TrainingArguments takes under the same name
_SAME_NAME_TRAINING_ARGS = (
    "deepspeed", "max_steps", "num_train_epochs", "gradient_accumulation_steps", "learning_rate",
    "weight_decay", "save_steps", "save_total_limit", "logging_steps", "dataloader_num_workers", "seed",
    "report_to",
)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from transformers import TrainingArguments

    from .checkpoints import write_run_config
    from .conversation import get_template
    from .data import LazySupervisedDataset, LlavaCollator, load_records
    from .trainer import LlavaTrainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = resolve_settings(args)
    output_dir = Path(settings["output_dir"])
    model, processor = build_for_stage(settings)
    dataset = LazySupervisedDataset(
        load_records(settings["data"]),
        settings["image_folder"],
        processor,
        get_template(settings["template"]),
        max_length=settings["max_length"],
        max_bad_fraction=settings["max_bad_fraction"],
    )
    logger.info("%d usable samples (%d bad when read)", len(dataset), dataset.bad_samples.num_bad)
    training_args = TrainingArguments(
        output_dir=str(output_dir),
        **{key: settings[key] for key in _SAME_NAME_TRAINING_ARGS},
        per_device_train_batch_size=settings["per_device_batch_size"],
        warmup_steps=settings["warmup_ratio"],  # a float < 1 is a ratio of the total steps
        lr_scheduler_type=settings["lr_scheduler"],
        bf16=settings["precision"] == "bf16",
        gradient_checkpointing=not settings["no_gradient_checkpointing"],
        gradient_checkpointing_kwargs={"use_reentrant": False},
        save_strategy="steps",
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = LlavaTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=LlavaCollator(processor.tokenizer.pad_token_id),
        processing_class=processor,
        group_by_modality_length=settings["group_by_modality_length"],
        projector_lr=settings["projector_lr"] if settings["stage"] == "lora" else None,
        save_projector_alone=settings["stage"] == "pretrain",
    )
    if training_args.should_save:
        write_run_config(output_dir, settings)
    resume = any(output_dir.glob("checkpoint-*"))  # as LLaVA: a rerun continues where it stopped
    if resume:
        logger.info("resuming from the last checkpoint in %s", output_dir)
    trainer.train(resume_from_checkpoint=resume or None)
    trainer.save_model(str(output_dir))
    trainer.save_state()
    if dataset.bad_samples.num_bad:
        logger.warning(dataset.bad_samples.summary())
    return 0
