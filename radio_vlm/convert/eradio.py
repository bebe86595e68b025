"""Official E-RADIO checkpoints (TorchHub `.pth.tar` or HF folder) -> `ERadioConfig` + `ERadioModel` state dict.

The official model is built by timm from `args.model` (+ `args.model_kwargs`): a registered name
(`eradio` = `eradio_large_fullres_ws16`, `eradio_xxxtiny`) whose hyper-parameters are listed below, or a
custom name whose `ERADIO(...)` keyword arguments come as a constructor JSON (the fixture
`eradio_tiny.pth.tar` + `eradio_tiny_constructor.json`, see tests/fixtures/radio_reference_extra/README.md).

Key map (official -> ours): strip `base_model.`; keep `input_conditioner.*`; drop the position-bias buffers
`*.pos_emb_funct.{relative_coords_table, relative_position_index, relative_bias}`, which are derived from the
window size (our model computes them; `relative_bias` is stored as zeros anyway). Every other module name is
the official one. Adaptor heads and feature normalizers (`_heads.*`, ...) are left to the caller.
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.configuration_eradio import ERadioConfig
from ..models.modeling_eradio import ERadioModel
from .checkpoint import check_constructor

# `ERADIO(...)` keyword arguments of the official registered builders (radio/eradio_model.py,
# reference/radio_official.md section 5). Builders with conv_base=False (the *_8x_* variants, which
# sub-sample by average pooling instead of strided convolutions) are not supported.
_ERADIO_L = {
    "depths": [3, 3, 5, 5],
    "num_heads": [2, 4, 8, 16],
    "window_size": [None, None, [16, 16], 16],
    "dim": 192,
    "in_dim": 64,
    "mlp_ratio": 4,
    "drop_path_rate": 0.0,
    "sr_ratio": [1, 1, [2, 1], 1],
    "use_swiglu": False,
    "yolo_arch": True,
    "shuffle_down": False,
    "conv_base": True,
    "use_neck": True,
    "full_features_head_dim": 1536,
    "neck_start_stage": 2,
}
ERADIO_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "eradio": _ERADIO_L,
    "eradio_large_fullres_ws16": _ERADIO_L,
    "eradio_xxxtiny": {
        **_ERADIO_L,
        "depths": [1, 3, 4, 5],
        "dim": 32,
        "in_dim": 32,
        "full_features_head_dim": 256,
    },
}

# official defaults of the ERADIO arguments we map, and the value each other argument must have
_DEFAULTS = {
    "cpb_mlp_hidden": 512,
    "conv_groups_ratio": 0,
    "neck_start_stage": 1,
    "full_features_head_dim": 128,
}
_REQUIRED = {
    "yolo_arch": (True, False),  # (required value, official default)
    "conv_base": (True, False),
    "shuffle_down": (False, False),
    "downsample_shuffle": (False, False),
    "use_swiglu": (False, False),
    "multi_query": (False, False),
    "use_shift": (False, False),
    "qkv_bias": (False, False),
    "qk_scale": (None, None),
    "layer_scale": (None, None),
    "layer_norm_last": (False, False),
    "in_chans": (3, 3),
}
# arguments that do not change inference (training regularisation, the discarded classifier, logging)
_IGNORED = {
    "drop_path_rate",
    "drop_uniform",
    "num_classes",
    "max_depth",
    "verbose",
    "mlp_ratio",
    "layer_scale_conv",
    "weight_init",
}
_MAPPED = {
    "dim",
    "in_dim",
    "depths",
    "num_heads",
    "window_size",
    "sr_ratio",
    "use_neck",
    "return_full_features",
}
_DERIVED_BUFFERS = ("relative_coords_table", "relative_position_index", "relative_bias")


def _single(value: Any, what: str) -> int:
    """One int from an official per-stage entry (int or list of equal ints)."""
    values = set(value) if isinstance(value, (list, tuple)) else {value}
    if len(values) != 1 or not isinstance(next(iter(values)), int):
        raise ValueError(f"E-RADIO constructor: {what}={value!r} must be one int (or a list of equal ints)")
    return next(iter(values))


def eradio_config_from_constructor(constructor: dict[str, Any]) -> ERadioConfig:
    """Map official `ERADIO(**constructor)` keyword arguments to an `ERadioConfig`.

    Raises ValueError naming the argument when the official model would differ from ours.
    """
    check_constructor(constructor, "E-RADIO constructor", set(_DEFAULTS) | _IGNORED | _MAPPED, _REQUIRED)
    if not (constructor.get("use_neck") or constructor.get("return_full_features")):
        raise ValueError(
            "E-RADIO constructor: needs use_neck=True or return_full_features=True (dense features)"
        )
    if constructor.get("conv_groups_ratio", 0) == -1:
        raise ValueError("E-RADIO constructor: conv_groups_ratio=-1 (no pre-attention conv) is not supported")
    windows, ratios = constructor["window_size"], constructor["sr_ratio"]
    if len(windows) != 4 or len(ratios) != 4 or ratios[0] != 1 or ratios[1] != 1:
        raise ValueError(
            f"E-RADIO constructor: window_size={windows!r} / sr_ratio={ratios!r} need 4 stages, "
            "with sr_ratio 1 for the two conv stages"
        )
    sr_ratios = [[int(r) for r in (s if isinstance(s, (list, tuple)) else [s])] for s in ratios[2:]]
    window = _single(
        [_single(windows[2], "window_size[2]"), _single(windows[3], "window_size[3]")], "window_size"
    )
    merged = {**_DEFAULTS, **constructor}
    return ERadioConfig(
        dim=merged["dim"],
        in_dim=merged["in_dim"],
        depths=list(merged["depths"]),
        num_heads=list(merged["num_heads"]),
        window_size=window,
        sr_ratios=sr_ratios,
        mlp_ratio=4.0,  # the official attention block hard-codes mlp_ratio = 4 whatever the argument says
        cpb_mlp_hidden=merged["cpb_mlp_hidden"],
        conv_groups_ratio=float(merged["conv_groups_ratio"]),
        full_features_head_dim=merged["full_features_head_dim"],
        neck_start_stage=merged["neck_start_stage"],
    )


def _args_dict(args: Any) -> dict[str, Any]:
    return dict(vars(args)) if hasattr(args, "__dict__") else dict(args or {})


def convert_eradio_checkpoint(
    checkpoint: dict[str, Any], constructor: dict[str, Any] | None = None
) -> tuple[ERadioConfig, dict[str, torch.Tensor]]:
    """An official E-RADIO TorchHub checkpoint (the loaded `.pth.tar` dict) -> (config, `ERadioModel` state dict).

    `constructor` gives the `ERADIO(...)` keyword arguments when `args.model` is not a registered official
    name. EMA weights are preferred when present. Keys outside `base_model.*` / `input_conditioner.*`
    (adaptor heads, feature normalizers) are not returned. Raises ValueError when names or shapes differ.
    """
    args = _args_dict(checkpoint.get("args"))
    name = args.get("model")
    if constructor is None:
        if name not in ERADIO_ARCHITECTURES:
            raise ValueError(
                f"E-RADIO checkpoint has args.model={name!r}, which is not a registered official E-RADIO "
                f"({sorted(ERADIO_ARCHITECTURES)}): pass its ERADIO(...) keyword arguments as a constructor "
                "JSON (--constructor FILE, or <checkpoint>_constructor.json beside it)"
            )
        constructor = ERADIO_ARCHITECTURES[name]
    constructor = {**constructor, **(args.get("model_kwargs") or {})}
    config = eradio_config_from_constructor(constructor)

    source = checkpoint.get("state_dict_ema") or checkpoint.get("state_dict")
    if source is None:
        raise ValueError(f"E-RADIO checkpoint has no state_dict (keys: {sorted(checkpoint)})")
    state_dict = {}
    for key, value in source.items():
        key = key.removeprefix("module.")
        if key.rsplit(".", 1)[-1] in _DERIVED_BUFFERS:
            continue
        if key.startswith("base_model."):
            state_dict[key.removeprefix("base_model.")] = value
        elif key.startswith("input_conditioner."):
            state_dict[key] = value
    if "input_conditioner.norm_mean" in state_dict:
        config.norm_mean = state_dict["input_conditioner.norm_mean"].flatten().tolist()
        config.norm_std = state_dict["input_conditioner.norm_std"].flatten().tolist()
    _check_against_model(config, state_dict)
    return config, state_dict


def _check_against_model(config: ERadioConfig, state_dict: dict[str, torch.Tensor]) -> None:
    with torch.device("meta"):
        expected = {k: v.shape for k, v in ERadioModel(config).state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{k}: {tuple(state_dict[k].shape)} vs {tuple(s)}"
        for k, s in expected.items()
        if k in state_dict and state_dict[k].shape != s
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            "E-RADIO checkpoint does not match its configuration (check the constructor JSON / args.model): "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
            f"shape mismatches {wrong[:5]}"
        )


def eradio_backbone(
    args: dict, state: dict[str, torch.Tensor], constructor: dict[str, Any] | None
) -> tuple[ERadioConfig, dict[str, torch.Tensor]]:
    """The E-RADIO backbone of an official checkpoint: (config, `backbone.*` weights), its keys taken out of
    `state` (adaptor heads and normalizers are left there)."""
    backbone_config, backbone_state = convert_eradio_checkpoint(
        {"args": args, "state_dict": state}, constructor
    )
    for key in [k for k in state if k.startswith(("base_model.", "input_conditioner."))]:
        del state[key]
    return backbone_config, {"backbone." + k: v for k, v in backbone_state.items()}
