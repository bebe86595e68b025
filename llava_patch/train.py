"""`radio-llava train --stage pretrain|finetune|lora`: LLaVA-1.5's recipe with RADIO on the HF Trainer.

Reads top to bottom: settings, training arguments (before the model, so that DeepSpeed ZeRO-3 partitions
the weights while they load), build, load the projector, freeze (logged), data, engine, train, save.
Defaults are LLaVA-1.5's scripts/v1_5 (reference llava.md 2.6): global batch 256 / 128 / 128, lr 1e-3 /
2e-5 / 2e-4 (LoRA projector 2e-5), cosine, warmup 0.03, weight decay 0, 1 epoch, bf16 (on GPUs),
gradient checkpointing, max length 2048. The gradient accumulation is derived from the global batch,
the per-device batch and the world size, so fewer GPUs train the same recipe (LLaVA #360).

Precision (`--precision`) decides every weight's dtype, never the checkpoint: under DeepSpeed bf16 / fp16
weights (the engine keeps fp32 master weights), without it fp32 weights that the Trainer autocasts to
bf16 / fp16. Each rank logs its peak resident memory while the model is built and while it trains.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

logger = logging.getLogger("llava_patch.train")

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


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
    a(
        "--token-merge",
        default="none",
        help="merge of the patch grid before the projector: none | unshuffle:<s> | pool:<s>",
    )
    a("--max-image-tokens", type=int, default=None, help="at most N image tokens per image (lower long edge)")
    a("--max-steps", type=int, default=-1, help="stop after N optimizer steps (default: one epoch)")
    a("--num-train-epochs", type=float, default=1.0)
    a("--learning-rate", type=float, default=None)
    a("--projector-lr", type=float, default=None)
    a("--global-batch-size", type=int, default=None)
    a("--per-device-batch-size", type=int, default=None)
    a("--warmup-ratio", type=float, default=0.03)
    a("--weight-decay", type=float, default=0.0)
    a("--lr-scheduler", default="cosine")
    a(
        "--precision",
        choices=sorted(PRECISIONS),
        default=None,
        help="default: bf16 on a GPU that has it, else fp16 on a GPU, fp32 on CPU",
    )
    a("--no-gradient-checkpointing", action="store_true")
    a("--max-length", type=int, default=2048)
    a(
        "--max-bad-fraction",
        type=float,
        default=0.01,
        help="abort when more of the data set's samples are bad (each counted once)",
    )
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
        cuda = torch.cuda.is_available()
        settings["precision"] = (
            "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp16" if cuda else "fp32"
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


def weights_dtype(settings: dict) -> torch.dtype:
    """The dtype of every weight: bf16 / fp16 under DeepSpeed (its engine keeps fp32 master weights, as
    LLaVA), otherwise fp32 (the Trainer's bf16 / fp16 is autocast over fp32 weights)."""
    return PRECISIONS[settings["precision"]] if settings["deepspeed"] else torch.float32


def build_for_stage(settings: dict):
    """(model, processor) with the stage's trainable parts; the model is a PeftModel for LoRA."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    from .checkpoints import load_projector
    from .model import build

    model, processor = build(
        settings["vision_tower"],
        settings["llm"],
        feature_sources=settings["feature_sources"],
        output_layernorm=settings["output_layernorm"],
        trainable_vision_tower=settings["unfreeze_vision_tower"],
        long_edge=settings["long_edge"],
        dtype=weights_dtype(settings),
        token_merge=settings.get("token_merge", "none"),  # .get: run configs from before these settings
        max_image_tokens=settings.get("max_image_tokens"),
    )
    # Before the engine partitions anything (ZeRO-3 + a projector load = LLaVA #736).
    if settings["pretrained_projector"]:
        logger.info("projector loaded from %s", load_projector(model, settings["pretrained_projector"]))
    model.config.use_cache = False
    if is_deepspeed_zero3_enabled():
        # ZeRO-3 gathers a module's weights, collectively, each time it runs, so every rank must run the
        # same modules the same number of times. The tower's inner calls depend on its images (adaptor
        # heads run per image), so it is gathered whole, once per forward, as a ZeRO-3 "leaf"
        from deepspeed.utils import set_z3_leaf_module

        set_z3_leaf_module(model.model.vision_tower, True)
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


_PARTS = {"vision_tower": "vision_tower", "projector": "multi_modal_projector", "lora": "lora_"}


def _part(name: str) -> str:
    """Which part of the model a parameter name belongs to (the rest is the language model)."""
    return next((part for part, key in _PARTS.items() if key in name), "language_model")


def log_trainable(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Log (trainable, total) parameters per part: vision tower, projector, LLM, LoRA."""
    counts: dict[str, list[int]] = {name: [0, 0] for name in [*_PARTS, "language_model"]}
    for name, param in model.named_parameters():
        if "original_module" in name:  # peft's frozen copy of a modules_to_save module
            continue
        numel = getattr(param, "ds_numel", param.numel())  # ZeRO-3 partitioned: the whole tensor's size
        counts[_part(name)][0] += numel if param.requires_grad else 0
        counts[_part(name)][1] += numel
    for part, (trainable, total) in counts.items():
        if total:
            state = "trainable" if trainable == total else "frozen" if trainable == 0 else "partly trainable"
            logger.info("%-15s %s: %d of %d parameters train", part, state, trainable, total)
    return {k: tuple(v) for k, v in counts.items()}


def dtypes_used(model: torch.nn.Module, settings: dict) -> dict:
    """What the run computes in (recorded in radio_llava_run.json): each part's weight dtype, the
    Trainer's autocast dtype (without DeepSpeed) and DeepSpeed's master weights (with it)."""
    weights: dict[str, set[str]] = {}
    for name, param in model.named_parameters():
        weights.setdefault(_part(name), set()).add(str(param.dtype).removeprefix("torch."))
    mixed = settings["precision"] != "fp32"
    compute = str(PRECISIONS[settings["precision"]]).removeprefix("torch.")
    return {
        "weights": {
            part: sorted(names) if len(names) > 1 else names.pop() for part, names in weights.items()
        },
        "autocast": compute if mixed and not settings["deepspeed"] else None,
        "deepspeed_master_weights": "float32" if settings["deepspeed"] else None,
    }


class PeakRSS:
    """This process's resident memory (bytes): at `reset()`, and its peak since then (Linux: VmHWM of
    /proc/self/status, which writing 5 to /proc/self/clear_refs resets). Elsewhere the values are None."""

    def __init__(self):
        self.start = self.reset()

    @staticmethod
    def _status(field: str) -> int | None:
        try:
            match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
        except OSError:
            return None
        return int(match.group(1)) * 1024 if match else None

    def reset(self) -> int | None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return None
        self.start = self._status("VmRSS")
        return self.start

    def peak(self) -> int | None:
        return self._status("VmHWM") if self.start is not None else None


def log_memory(rank: int, phase: str, peak: int | None, baseline: int | None) -> None:
    """One line per rank (bench/llava_memory.py reads them): peak RSS and its rise over `baseline`."""
    if peak is not None and baseline is not None:
        logger.info(
            "rank %d memory: %s peak RSS %.3f GiB, %+.3f GiB over before the build",
            rank, phase, peak / 2**30, (peak - baseline) / 2**30,
        )  # fmt: skip


# run settings that TrainingArguments takes under the same name
_SAME_NAME_TRAINING_ARGS = (
    "deepspeed", "max_steps", "num_train_epochs", "gradient_accumulation_steps", "learning_rate",
    "weight_decay", "save_steps", "save_total_limit", "logging_steps", "dataloader_num_workers", "seed",
    "report_to",
)  # fmt: skip


def training_arguments(settings: dict):
    """The Trainer's arguments. Create them before the model: with a ZeRO-3 config they activate
    transformers' `HfDeepSpeedConfig`, under which `from_pretrained` partitions the weights across the ranks
    while they load (`deepspeed.zero.Init`) instead of loading the whole LLM on every rank, as LLaVA's
    train.py does by parsing its TrainingArguments first. Keep the object alive while the model is built."""
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=settings["output_dir"],
        **{key: settings[key] for key in _SAME_NAME_TRAINING_ARGS},
        per_device_train_batch_size=settings["per_device_batch_size"],
        warmup_steps=settings["warmup_ratio"],  # a float < 1 is a ratio of the total steps
        lr_scheduler_type=settings["lr_scheduler"],
        bf16=settings["precision"] == "bf16",
        fp16=settings["precision"] == "fp16",
        gradient_checkpointing=not settings["no_gradient_checkpointing"],
        gradient_checkpointing_kwargs={"use_reentrant": False},
        save_strategy="steps",
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
    )
    if settings["deepspeed"]:
        import deepspeed

        # zero.Init takes the world size from deepspeed.comm, which accelerate sets up on GPUs only: on
        # top of the process group that `args.device` initialises, as the engine would later
        args.device  # noqa: B018
        deepspeed.init_distributed(auto_mpi_discovery=False)
    return args


def run(args: argparse.Namespace) -> int:
    from transformers import set_seed

    from .checkpoints import BAD_SAMPLES_FILE, write_run_config
    from .conversation import get_template
    from .data import LazySupervisedDataset, LlavaCollator, TooManyBadSamples, load_records
    from .trainer import LlavaTrainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = resolve_settings(args)
    output_dir = Path(settings["output_dir"])
    training_args = training_arguments(settings)  # first: see its docstring
    rank = training_args.process_index
    set_seed(settings["seed"])  # the new projector's initialisation
    memory, start = PeakRSS(), time.perf_counter()
    model, processor = build_for_stage(settings)
    logger.info("rank %d: model built in %.1f s", rank, time.perf_counter() - start)
    log_memory(rank, "load", memory.peak(), memory.start)
    settings["dtypes"] = dtypes_used(model, settings)
    dataset = LazySupervisedDataset(
        load_records(settings["data"]),
        settings["image_folder"],
        processor,
        get_template(settings["template"]),
        max_length=settings["max_length"],
        max_bad_fraction=settings["max_bad_fraction"],
    )
    logger.info("%d usable samples (%d bad when read)", len(dataset), dataset.bad_samples.num_bad)
    trainer = LlavaTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=LlavaCollator.for_processor(processor),
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
    baseline = memory.start
    memory.reset()
    try:
        trainer.train(resume_from_checkpoint=resume or None)
    except TooManyBadSamples:
        if training_args.should_save:
            dataset.bad_samples.write(output_dir / BAD_SAMPLES_FILE)
        raise
    log_memory(rank, "train", memory.peak(), baseline)
    trainer.save_model(str(output_dir))
    trainer.save_state()
    if dataset.bad_samples.num_bad:
        logger.warning(
            "%s\n(all of them in %s)", dataset.bad_samples.summary(), output_dir / BAD_SAMPLES_FILE
        )
        if training_args.should_save:
            dataset.bad_samples.write(output_dir / BAD_SAMPLES_FILE)
    return 0
