"""Every training setting of an official checkpoint the converter understands, in one table; anything else is refused.

An official checkpoint carries its training run's `args` (a pickled `argparse.Namespace`; `config.json["args"]`
in an HF folder). The official loader builds the model from some of them, so a setting this converter does
not know may change what the model computes (`scaled_ln` lives in no weight, only in `args.model_kwargs`).
Each key is therefore one of:

- mapped: read into the converted config (or checked against the weights), e.g. `model_norm`, `cpe_max_size`;
- inert: known not to change the model's outputs (training-only settings, or settings the official
  inference code reads but that change nothing in eval mode);

and a key that is neither is refused with its name and value. `inert_args` (`radio-vlm convert --inert-arg`)
lets a user who has checked a new key against the official code convert anyway. The E-RADIO builder's keyword
arguments have their own table in `eradio.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple


class Setting(NamedTuple):
    kind: str  # "mapped" | "inert"
    note: str  # how it is mapped, or why it changes nothing
    allowed: Callable[[Any], bool] | None = None  # values the converter can reproduce (None: any)
    allowed_text: str = ""  # the allowed values, for the error message


def _mapped(note: str, allowed: Callable[[Any], bool] | None = None, allowed_text: str = "") -> Setting:
    return Setting("mapped", note, allowed, allowed_text)


def _inert(note: str, allowed: Callable[[Any], bool] | None = None, allowed_text: str = "") -> Setting:
    return Setting("inert", note, allowed, allowed_text)


def _is_none(value: Any) -> bool:
    return value is None


def _three_channels(value: Any) -> bool:
    return (
        value is None
        or value == 3
        or (isinstance(value, (list, tuple)) and len(value) == 3 and value[0] == 3)
    )


def _spectral(value: Any) -> bool:
    return isinstance(value, bool) or (
        isinstance(value, dict) and set(value) <= {"n_power_iterations", "eps"}
    )


_TRAINING = "a training-run setting; the official inference code does not read it"
_TIMM_BUILDER = "passed to the timm builder, where it only affects training (dropout, initialisation, head)"

# The keys the official inference code (hubconf.radio_model, create_model_from_args, the adaptors; NVlabs/RADIO
# c0f3701) reads from `args`, then the training-run keys of timm's train.py and of RADIO's trainer as the
# released checkpoints carry them (config.json "args" of nvidia/RADIO, RADIO-H, C-RADIO, C-RADIOv3/v4).
ARGS: dict[str, Setting] = {
    "model": _mapped("the student architecture, a name of `students.STUDENTS` (else refused)"),
    "model_kwargs": _mapped(
        "the builder's keyword arguments: `VIT_MODEL_KWARGS` (ViT), `eradio.py` (E-RADIO); the DINOv2 "
        "students' builders (dino_v2_{l,g}_student) ignore them"
    ),
    "model_norm": _mapped("a final LayerNorm (`final_norm`); the DINOv2 students always have one"),
    "cpe_max_size": _mapped("the position table's side in px (checked against `pos_embed`); E-RADIO: None"),
    "cls_token_per_teacher": _mapped(
        "one CLS token per unique teacher name (else 1): summary_idxs, head_idx"
    ),
    "teachers": _mapped("one adaptor per name: `TEACHER_KEYS`"),
    "register_multiple": _mapped("register count: register_multiple - num_cls % register_multiple"),
    "cpe_num_registers": _mapped("register count, when set"),
    "mlp_version": _mapped(
        "default head layout (checked against the head weights)", lambda v: v in (None, "v1", "v2"), "v1, v2"
    ),
    "spatial_mlp_version": _mapped(
        "default feature-head layout (checked against the head weights)",
        lambda v: v in (None, "v1", "v2", "attn"),
        "v1, v2, attn",
    ),
    "spectral_reparam": _mapped(
        "spectral-reparametrised weights are baked (power iterations and eps of a dict form)",
        _spectral,
        "a bool, or a dict of n_power_iterations and eps",
    ),
    "spectral_heads": _mapped("the adaptor heads' weights are spectral-reparametrised too (baked alike)"),
    "damp": _inert("DAMP is an identity parametrisation at NVlabs/RADIO c0f3701 (enable_damp.py)"),
    "dtype": _inert(
        "the official loader's run-time precision; converted weights keep the checkpoint's values in float32 "
        "(load with dtype= to run in it)"
    ),
    "in_chans": _inert("input channels; RADIO takes RGB", _three_channels, "None or 3"),
    "input_size": _inert(
        "input size; the CPE patch generator takes any size", _three_channels, "None or (3, H, W)"
    ),
    "pretrained": _inert("timm initialisation; the checkpoint's weights replace it"),
    "initial_checkpoint": _inert("initial weights for training; the checkpoint's weights replace them"),
    "num_classes": _inert("the classifier head, which the official loader replaces by Identity"),
    "gp": _inert("global pooling of the classifier head; the summary comes from the CLS tokens"),
    "drop": _inert(_TIMM_BUILDER),
    "drop_path": _inert(_TIMM_BUILDER),
    "drop_block": _inert(_TIMM_BUILDER),
    "drop_connect": _inert(_TIMM_BUILDER),
    "bn_momentum": _inert("BatchNorm running-statistics momentum (training only)"),
    "bn_eps": _inert(
        "BatchNorm eps, passed to the builder when set: ViTs have no BatchNorm, E-RADIO's must be the default",
        _is_none,
        "None",
    ),
    "torchscript": _inert("scripting the model for training"),
    "amp_dtype": _inert(_TRAINING + " (mixed-precision training)"),
    "enable-cudnn-attention": _inert(_TRAINING + " (a kernel choice; hf_hub.py drops it)"),
}
# timm train.py (2023-2026) and RADIO's trainer: data, augmentation, optimisation, schedule, logging, checkpoints
_TRAINING_KEYS = """
aa amp amp_impl apex_amp aug_repeats aug_splits auto_loss_balance_mode auto_workload_inspector batch_size
bce_loss bce_pos_weight bce_sum bce_target_thresh bn_tf cache_dir channels_last checkpoint_folder
checkpoint_hist chk_keep_forever class_map clip_grad clip_mode coco_annotations_file coco_image_dir
color_jitter color_jitter_prob config cooldown_epochs crd_loss crd_loss_weight crop_pct cutmix cutmix_minmax
data data_dir dataset dataset_download dataset_trust_remote_code ddp_comm_fp16 ddp_comm_power_sgd
debug_full_knn decay_epochs decay_milestones decay_rate depchain detect_anomaly device device_modules dist_bn
dist_norm_weight distill_loss_weight distributed epoch epoch_repeats epochs eval eval_metric eval_teacher
eval_teacher_only eval_throughput experiment fast_norm fd_loss_fn feature_normalization feature_summarizer
feature_upscale_factor force_disable_damp force_disable_spectral_reparam force_spectral_reparam fuser
gaussian_blur_prob grad_accum_steps grad_checkpointing grayscale_prob head_init_bias head_init_scale hflip
img_size input_img_mode input_key interpolation jsd jsd_loss layer_decay layer_decay_min_scale
layer_decay_no_opt_scale local_rank log_interval log_wandb lr lr_base lr_base_scale lr_base_size
lr_cycle_decay lr_cycle_limit lr_cycle_mul lr_k_decay lr_noise lr_noise_pct lr_noise_std mean min_lr mixup
mixup_mode mixup_off_epoch mixup_prob mixup_switch_prob model_dtype model_ema model_ema_decay
model_ema_force_cpu model_ema_warmup momentum native_amp no_aug no_ddp_bb no_prefetcher no_resume_opt opt
opt_betas opt_eps opt_kwargs output patience_epochs pin_mem pretrained_path prefetcher rank ratio recount
recovery_interval remode reprob resplit resume save_images scale sched sched_on_updates seed smoothing
split_bn start_epoch std sync_bn synchronize_step target_key task_loss_weight torchcompile torchcompile_mode
train_batch_sizes train_crop_mode train_interpolation train_num_samples train_split tta
use_multi_epochs_loader val_num_samples val_split validation_batch_size vflip wandb_project wandb_resume_id
wandb_tags warmup_epochs warmup_lr warmup_prefix weight_decay worker_seeding workers world_size
"""
ARGS.update({key: _inert(_TRAINING) for key in _TRAINING_KEYS.split() if key not in ARGS})

# keys of one `args.teachers` entry (what hubconf.radio_model and GenericAdaptor read)
TEACHER_KEYS: dict[str, Setting] = {
    "name": _mapped("the adaptor's name (`_heads.<name>.*`, `_feature_projections.<name>.*`)"),
    "use_summary": _mapped("whether its CLS token is part of the backbone summary (summary_idxs)"),
    "token_slot": _mapped("the CLS slot its summary head reads (head_idx)"),
    "fd_upsample_factor": _mapped("the feature head's upsampling (upsample_factor)"),
    "mlp_version": _mapped(
        "its summary-head layout (checked against the weights)", lambda v: v in ("v1", "v2"), "v1, v2"
    ),
    "spatial_mlp_version": _mapped(
        "its feature-head layout (checked against the weights)",
        lambda v: v in ("v1", "v2", "attn"),
        "v1, v2, attn",
    ),
    "type": _inert("the adaptor class; the registered ones add a text tower, which is not converted"),
    "model": _inert("the teacher model (loaded by the official text-tower adaptors only)"),
    "pretrained": _inert("the teacher's weights (loaded by the official text-tower adaptors only)"),
    "fd_upsample_rank": _inert("accepted but unused by the official MLP2 at c0f3701"),
}

# `args.model_kwargs` of the timm ViT students (passed to the builder, so each may change the model)
VIT_MODEL_KWARGS: dict[str, Setting] = {
    "embed_dim": _mapped("width (checked against the weights)"),
    "depth": _mapped("number of blocks (checked against the weights)"),
    "num_heads": _mapped("attention heads (no weight shows them)"),
    "mlp_ratio": _mapped("MLP width / embed_dim (checked against the weights)"),
    "patch_size": _mapped("patch side (checked against the patch embedder)"),
    "qkv_bias": _mapped("qkv bias (checked against the weights)"),
    "init_values": _mapped("LayerScale: its presence is checked against the weights, its values are weights"),
    "scaled_ln": _mapped("ScaledLayerNorm in every block (`scaled_ln`); a `vit_giant_patch16_224` argument"),
    "weight_init": _inert("the initialisation scheme; the checkpoint's weights replace it"),
    "drop_rate": _inert(_TIMM_BUILDER),
    "pos_drop_rate": _inert(_TIMM_BUILDER),
    "patch_drop_rate": _inert(_TIMM_BUILDER),
    "proj_drop_rate": _inert(_TIMM_BUILDER),
    "attn_drop_rate": _inert(_TIMM_BUILDER),
    "drop_path_rate": _inert(_TIMM_BUILDER),
    "reg_tokens": _inert(
        "timm's own register tokens (`reg_token`), unused once the CPE patch generator is on"
    ),
    "no_embed_class": _inert("timm's position-table layout, replaced by the CPE patch generator"),
    "img_size": _mapped(
        "timm's position table, replaced by the CPE patch generator; refused when it equals cpe_max_size "
        "(the official generator then crops its table instead of resizing it)"
    ),
    "dynamic_img_size": _inert("timm's patch embedder, replaced by the CPE patch generator"),
    "dynamic_img_pad": _inert("timm's patch embedder, replaced by the CPE patch generator"),
    "class_token": _inert("the CPE patch generator's CLS tokens need it", lambda v: v is True, "True"),
    "global_pool": _inert("the classifier head's pooling; the summary comes from the CLS tokens"),
    "num_classes": _inert("the classifier head, replaced by Identity"),
    "fc_norm": _inert("the classifier head's norm, unused once the head is Identity"),
}

# the top-level keys of an official HF remote-code `config.json` (radio/hf_model.py RADIOConfig + transformers')
_HF_METADATA = "transformers' own config metadata"
HF_CONFIG: dict[str, Setting] = {
    "args": _mapped("the training args, checked with `ARGS`"),
    "version": _mapped("the release (`releases.py`): metadata"),
    "patch_size": _mapped("metadata; the patch embedder's weight gives the patch size"),
    "max_resolution": _mapped("metadata (max_resolution)"),
    "preferred_resolution": _mapped("metadata (preferred_resolution)"),
    "adaptor_configs": _mapped("each head's head_idx; dims are read from the weights"),
    "adaptor_names": _inert(
        "which heads the remote code builds; every head in the weights converts (--adaptors)"
    ),
    "feature_normalizer_config": _inert("its presence; the normalizer's weights are converted"),
    "inter_feature_normalizer_config": _inert("its presence; the normalizer's weights are converted"),
    "vitdet_window_size": _inert(
        "the remote code only changes min_resolution_step with it, not the attention"
    ),
    **{
        key: _inert(_HF_METADATA)
        for key in (
            "architectures",
            "auto_map",
            "dtype",
            "torch_dtype",
            "transformers_version",
            "_name_or_path",
            "model_type",
        )
    },
}


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_settings(
    args: dict[str, Any],
    model_kwargs_table: dict[str, Setting] | None,
    source: Path,
    inert: Iterable[str] = (),
    hf_config: dict[str, Any] | None = None,
) -> None:
    """Raise one ValueError naming every `args` / `args.model_kwargs` / `args.teachers[i]` (/ HF `config.json`)
    key, with its value, that is neither in the tables above nor in `inert`, and every known key whose value
    cannot be reproduced.

    `model_kwargs_table` None means the family's builder ignores `model_kwargs` (DINOv2) or checks them itself
    (E-RADIO). `inert` holds keys the user declares inert: `key`, `model_kwargs.key`, `teachers.key` or
    `config.key` (HF config.json).
    """
    inert = set(inert)
    unknown: dict[str, list[str]] = {}  # --inert-arg name -> the entries it would accept
    refused = []

    def visit(table: dict[str, Setting], entries: dict[str, Any], where: str, group: str) -> None:
        for key, value in entries.items():
            setting, name = table.get(key), f"{group}{key}"
            if setting is None and name not in inert:
                unknown.setdefault(name, []).append(f"{where}{key}={_describe(value)}")
            elif setting is not None and setting.allowed is not None and not setting.allowed(value):
                refused.append(f"{where}{key}={_describe(value)} (reproducible: {setting.allowed_text})")

    visit(ARGS, args, "args.", "")
    if hf_config is not None:
        visit(HF_CONFIG, hf_config, "config.json ", "config.")
    if model_kwargs_table is not None:
        visit(model_kwargs_table, args.get("model_kwargs") or {}, "args.model_kwargs.", "model_kwargs.")
    for index, teacher in enumerate(args.get("teachers") or []):
        visit(TEACHER_KEYS, teacher, f"args.teachers[{index}].", "teachers.")
    problems = []
    if refused:
        problems.append(
            f"settings whose values change the model in a way not reproduced: {', '.join(refused)}"
        )
    if unknown:
        entries = ", ".join(entry for group in unknown.values() for entry in group)
        problems.append(
            f"settings this converter does not know, which may change what the model computes: {entries}. "
            f"If the official code does not use them at inference, pass --inert-arg {','.join(unknown)} "
            "(radio_vlm/convert/settings.py lists the known ones)"
        )
    if problems:
        raise ValueError(f"{source}: not converted: " + "; ".join(problems))
