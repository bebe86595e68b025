"""Configuration of `RadioWithAdaptors`: a RADIO backbone plus per-teacher adaptor heads.

This file is exported next to the weights for `trust_remote_code`, so it imports only torch/transformers and
sibling model files (relatively).
"""

from __future__ import annotations

import math
from typing import Any

from transformers import PretrainedConfig, RadioConfig

try:  # the E-RADIO backbone lives in its own files; absent files only disable that backbone type
    from .configuration_eradio import ERadioConfig
except ImportError:
    ERadioConfig = None

# backbone `model_type` -> config class. The model class is chosen by the same key in the modeling file.
BACKBONE_CONFIG_CLASSES: dict[str, type | None] = {"radio": RadioConfig, "eradio": ERadioConfig}

MLP_VERSIONS = ("v1", "v2")
# "attn" (C-RADIOv4's `spatial_mlp_version='attn'`): transformer blocks over the patch tokens, then MLP v2.
FEATURE_HEAD_VERSIONS = (*MLP_VERSIONS, "attn")
_HEAD_DEFAULTS = {"num_inner": 0, "mlp_version": "v2", "pre_norm": False}
# the official `AttnFDHead` hard-codes 2 blocks of 16 heads
_ATTN_DEFAULTS = {"num_blocks": 2, "num_heads": 16}
# official ViT student variants, each a flag of the config (ViT backbones only)
STUDENT_VARIANTS = ("patch_embed_bias", "mlp_norm", "scaled_ln", "final_norm")


def _backbone_config(value: Any) -> PretrainedConfig:
    if value is None:
        return RadioConfig()
    if isinstance(value, PretrainedConfig):
        config_class = BACKBONE_CONFIG_CLASSES.get(getattr(value, "model_type", None))
        if config_class is None:
            raise ValueError(
                f"backbone_config has model_type {value.model_type!r}; supported: "
                f"{sorted(k for k, v in BACKBONE_CONFIG_CLASSES.items() if v is not None)}"
            )
        return value
    if not isinstance(value, dict):
        raise TypeError(f"backbone_config must be a config or a dict, got {type(value).__name__}")
    value = dict(value)
    model_type = value.pop("model_type", "radio")
    config_class = BACKBONE_CONFIG_CLASSES.get(model_type)
    if config_class is None:
        raise ValueError(
            f"backbone_config.model_type={model_type!r} is not supported; supported: "
            f"{sorted(k for k, v in BACKBONE_CONFIG_CLASSES.items() if v is not None)}"
        )
    value.pop("transformers_version", None)
    return config_class(**value)


def head_spec(adaptor: str, kind: str, spec: dict | None) -> dict | None:
    """Validate one adaptor head spec and fill its defaults (`num_inner` 0, `mlp_version` "v2")."""
    if spec is None:
        return None
    spec = {**_HEAD_DEFAULTS, **({"upsample_factor": 1} if kind == "feature" else {}), **spec}
    versions = FEATURE_HEAD_VERSIONS if kind == "feature" else MLP_VERSIONS
    if spec["mlp_version"] not in versions:
        raise ValueError(
            f"adaptors[{adaptor!r}][{kind!r}]['mlp_version'] is {spec['mlp_version']!r}; supported: {versions}"
        )
    if spec["mlp_version"] == "attn":
        spec = {**_ATTN_DEFAULTS, **spec}
        if spec["num_inner"]:
            raise ValueError(f"adaptors[{adaptor!r}]['feature']: an 'attn' head's MLP has num_inner 0")
    integers = ("hidden_dim", "output_dim", *(_ATTN_DEFAULTS if spec["mlp_version"] == "attn" else ()))
    for key in integers:
        if not isinstance(spec.get(key), int) or spec[key] <= 0:
            raise ValueError(
                f"adaptors[{adaptor!r}][{kind!r}][{key!r}] must be a positive int, got {spec.get(key)!r}"
            )
    if kind == "feature" and (not isinstance(spec["upsample_factor"], int) or spec["upsample_factor"] < 1):
        raise ValueError(f"adaptors[{adaptor!r}]['feature']['upsample_factor'] must be an int >= 1")
    return spec


class RadioWithAdaptorsConfig(PretrainedConfig):
    r"""Configuration of [`RadioWithAdaptors`].

    Args:
        backbone_config (`RadioConfig`, `ERadioConfig` or `dict`, *optional*):
            The backbone's config. A dict picks its class by `model_type` ("radio" by default, or "eradio").
            Defaults to transformers' `RadioConfig()` (C-RADIOv4-H geometry).
        adaptors (`dict[str, dict]`, *optional*):
            Per-teacher heads, `{name: {"head_idx": int, "summary": head or None, "feature": head or None}}`,
            where a head is `{"hidden_dim", "output_dim", "num_inner" (0), "mlp_version" ("v2" | "v1"),
            "pre_norm" (False)}` and a feature head also has `"upsample_factor"` (1). A feature head may be
            `"mlp_version": "attn"` (C-RADIOv4): `"num_blocks"` (2) transformer blocks of `"num_heads"` (16)
            heads over the patch tokens, then an MLP v2 with `num_inner` 0. `head_idx` is the CLS slot the
            summary head reads. A feature head's `output_dim` is the teacher's channel count: with
            `upsample_factor` u its last Linear emits `u*u*output_dim` channels per token.
        feature_normalizer (`bool`, *optional*, defaults to `False`):
            Whether the backbone's spatial features go through a PHI-S-style whitening `(x - mean) @ tx.T`
            (official "-norm" checkpoints, `_feature_normalizer.*`).
        intermediate_feature_normalizer (`dict`, *optional*):
            `{"num_intermediates": L, "rot_per_layer": bool}` for the per-layer normalizer used by
            `forward_intermediates` (official `_intermediate_feature_normalizer.*`), or None.
        vitdet_window_size (`int`, *optional*):
            ViTDet window, in patches, for windowed attention; None runs every block globally.
        vitdet_num_global (`int`, *optional*):
            Number of global blocks in the ViTDet schedule (official default 4 when `vitdet_num_windowed` is None).
        vitdet_num_windowed (`int`, *optional*):
            Number of windowed blocks between global ones; takes precedence over `vitdet_num_global`.
            The two are the schedule `set_vitdet(window)` uses when it is given none (a converted release's
            official schedule, e.g. `vitdet_num_global=8` for RADIOv2.5-g).
        vitdet_supported (`bool`, *optional*, defaults to `True`):
            False for releases trained without ViTDet (C-RADIOv3): `set_vitdet` then refuses, as the official
            loader does.
        patch_embed_bias (`bool`, *optional*, defaults to `False`):
            The patch embedder has a bias (the DINOv2-architecture students, RADIO-g).
        mlp_norm (`bool`, *optional*, defaults to `False`):
            Each block's MLP has a LayerNorm (eps 1e-5) after its activation (the `*_mlpnorm` students, C-RADIO).
        scaled_ln (`bool`, *optional*, defaults to `False`):
            The outputs of `norm1` and `norm2` of block i (0-based) are scaled by 1/sqrt(i+1) (the `scaled_ln`
            giant students, arXiv 2502.05795); the scale is derived, no weight holds it.
        final_norm (`bool`, *optional*, defaults to `False`):
            A LayerNorm (eps of the backbone) after the last block, before summary and features are read
            (official `model_norm=True`, and the DINOv2-architecture students' `norm`).
        max_resolution (`int`, *optional*):
            Largest supported side in pixels (official `max_resolution`); defaults to the backbone's `max_img_size`.
        preferred_resolution (`list[int]`, *optional*):
            `[height, width]` the model was trained for (official `preferred_resolution`).
        version (`str`, *optional*):
            Official version string, e.g. "radio_v2.5-h"; metadata only.
        pos_embed_align_corners (`bool`, *optional*, defaults to `False`):
            `align_corners` of the eval-time position-table interpolation. False is the official code since
            2025-06-28 (and transformers' RadioModel); True reproduces checkpoints exported before that date.
        training_cpe (`bool`, *optional*, defaults to `True`):
            In train mode, sample a random crop of the position table per image (AM-RADIO CPE augmentation).
        cpe_min_scale (`float`, *optional*, defaults to `sqrt(0.1)`):
            Smallest crop side as a fraction of the table (official `ViTPatchGenerator`: scale ~ U(sqrt(.1), 1)).
        cpe_max_aspect (`float`, *optional*, defaults to `4/3`):
            Crop aspect ratio is `exp(U(-log a, log a))` with this `a` (official: 3/4..4/3).
        cpe_pos_dropout (`float`, *optional*, defaults to `0.1`):
            In train mode, probability of dropping an image's whole position embedding (official `pos_dropout`).
    """

    model_type = "radio_with_adaptors"

    backbone_config: dict | PretrainedConfig | None = None
    adaptors: dict | None = None
    feature_normalizer: bool = False
    intermediate_feature_normalizer: dict | None = None
    vitdet_window_size: int | None = None
    vitdet_num_global: int | None = None
    vitdet_num_windowed: int | None = None
    vitdet_supported: bool = True
    patch_embed_bias: bool = False
    mlp_norm: bool = False
    scaled_ln: bool = False
    final_norm: bool = False
    max_resolution: int | None = None
    preferred_resolution: list[int] | None = None
    version: str | None = None
    pos_embed_align_corners: bool = False
    training_cpe: bool = True
    cpe_min_scale: float = math.sqrt(0.1)
    cpe_max_aspect: float = 4.0 / 3.0
    cpe_pos_dropout: float = 0.1

    def __post_init__(self, **kwargs):
        self.backbone_config = _backbone_config(self.backbone_config)
        adaptors = {}
        for name, spec in (self.adaptors or {}).items():
            unknown = set(spec) - {"head_idx", "summary", "feature"}
            if unknown:
                raise ValueError(f"adaptors[{name!r}] has unknown keys {sorted(unknown)}")
            adaptors[name] = {
                "head_idx": int(spec.get("head_idx", 0)),
                "summary": head_spec(name, "summary", spec.get("summary")),
                "feature": head_spec(name, "feature", spec.get("feature")),
            }
        self.adaptors = adaptors
        variants = [name for name in STUDENT_VARIANTS if getattr(self, name)]
        if variants and self.backbone_config.model_type != "radio":
            raise ValueError(
                f"{variants} are ViT student variants; backbone model_type {self.backbone_config.model_type!r} has none"
            )
        inter = self.intermediate_feature_normalizer
        if inter is not None and "num_intermediates" not in inter:
            raise ValueError("intermediate_feature_normalizer needs 'num_intermediates' (the backbone depth)")
        if self.max_resolution is None:
            self.max_resolution = getattr(self.backbone_config, "max_img_size", None)
        if self.preferred_resolution is not None:
            self.preferred_resolution = [int(v) for v in self.preferred_resolution]
        super().__post_init__(**kwargs)

    @property
    def patch_size(self) -> int:
        """Pixels per token side (the backbone's output stride)."""
        return self.backbone_config.patch_size

    @property
    def embed_dim(self) -> int:
        """Width D of the backbone's tokens."""
        return self.backbone_config.hidden_size
