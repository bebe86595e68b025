"""Registry of tiny, randomly initialised RADIO models, built by the same code paths as real ones.

Tests, the demo and other packages use them instead of real weights (nothing is downloaded):

    model = build_tiny_radio("tiny-radio")            # RadioWithAdaptors, eval mode
    list_tiny_models()                                # ["tiny-radio", ...]
    tiny_eradio_config()                              # a small E-RADIO backbone's ERadioConfig
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .models.configuration_eradio import ERadioConfig
from .models.configuration_radio_with_adaptors import RadioWithAdaptorsConfig
from .models.modeling_radio_with_adaptors import RadioWithAdaptors

_VIT_32 = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "patch_size": 16,
    "max_img_size": 256,  # a 16x16 position table, like the official fixtures
    "num_cls_tokens": 3,
    "num_registers": 1,
    "summary_idxs": [0, 1],
}

# name -> RadioWithAdaptorsConfig kwargs. Teacher names and head shapes mimic RADIOv2.5 at 1/40 the width.
TINY_MODELS: dict[str, dict[str, Any]] = {
    "tiny-radio": {
        "backbone_config": _VIT_32,
        "adaptors": {
            "clip": {
                "head_idx": 0,
                "summary": {"hidden_dim": 48, "output_dim": 24},
                "feature": {"hidden_dim": 48, "output_dim": 32},
            },
            "dino_v2": {
                "head_idx": 1,
                "summary": {"hidden_dim": 48, "output_dim": 40, "num_inner": 1},
                "feature": {"hidden_dim": 48, "output_dim": 40, "num_inner": 1},
            },
            "sam": {
                "head_idx": 2,
                "summary": None,
                "feature": {"hidden_dim": 48, "output_dim": 16, "upsample_factor": 2},
            },
        },
        "max_resolution": 256,
        "preferred_resolution": [64, 64],
        "version": "tiny-radio",
    },
    "tiny-radio-4layer": {
        "backbone_config": {**_VIT_32, "num_hidden_layers": 4},
        "adaptors": {
            "clip": {
                "head_idx": 0,
                "summary": {"hidden_dim": 48, "output_dim": 24},
                "feature": {"hidden_dim": 48, "output_dim": 32},
            },
        },
        "feature_normalizer": True,
        "intermediate_feature_normalizer": {"num_intermediates": 4, "rot_per_layer": True},
        "max_resolution": 256,
        "preferred_resolution": [64, 64],
        "version": "tiny-radio-4layer",
    },
    "tiny-radio-backbone": {
        "backbone_config": _VIT_32,
        "max_resolution": 256,
        "preferred_resolution": [64, 64],
        "version": "tiny-radio-backbone",
    },
}


def list_tiny_models() -> list[str]:
    """Names accepted by `build_tiny_radio`."""
    return sorted(TINY_MODELS)


def tiny_radio_config(name: str, **overrides: Any) -> RadioWithAdaptorsConfig:
    """The config of tiny model `name`; `overrides` replace top-level fields (`backbone_config` dicts merge)."""
    if name not in TINY_MODELS:
        raise KeyError(f"unknown tiny model {name!r}; available: {list_tiny_models()}")
    kwargs = copy.deepcopy(TINY_MODELS[name])
    if isinstance(overrides.get("backbone_config"), dict):
        kwargs["backbone_config"] = {**kwargs["backbone_config"], **overrides.pop("backbone_config")}
    kwargs.update(overrides)
    return RadioWithAdaptorsConfig(**kwargs)


def build_tiny_radio(name: str = "tiny-radio", seed: int = 0, **overrides: Any) -> RadioWithAdaptors:
    """A tiny random `RadioWithAdaptors` in eval mode, deterministic for a given `seed`.

    Random (not identity) normalizers, LayerScale, CLS tokens and position table, so that every part
    of the model affects the outputs.
    """
    config = tiny_radio_config(name, **overrides)
    generator = torch.Generator().manual_seed(seed)
    model = RadioWithAdaptors(config)
    near_one = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    tensors = [*model.named_parameters(), *model.named_buffers()]
    with torch.no_grad():
        for name, tensor in tensors:
            if not tensor.is_floating_point() or name.startswith("backbone.input_conditioner"):
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if id(tensor) in near_one or name.endswith(("lambda1", "alphas")):
                tensor.copy_(1 + 0.1 * noise)  # LayerNorm gains, LayerScale, normalizer alphas near 1
            elif name.endswith(("tx", "rotation")):
                tensor.copy_(torch.eye(tensor.shape[-1]) + 0.1 * noise)
            elif tensor.ndim >= 2:
                tensor.copy_(noise * tensor.shape[-1] ** -0.5)
            else:
                tensor.copy_(0.1 * noise)
    return model.eval()


def tiny_eradio_config() -> ERadioConfig:
    """A small E-RADIO backbone (width 8, one block per level, stride-16 features, inputs in multiples of 32)."""
    return ERadioConfig(
        dim=8,
        in_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=2,
        cpb_mlp_hidden=8,
        full_features_head_dim=16,
    )
