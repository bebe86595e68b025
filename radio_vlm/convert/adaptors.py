"""Adaptor heads and feature normalizers of an official checkpoint -> `RadioWithAdaptorsConfig.adaptors` + weights.

_heads.{index|name}.*                    -> adaptors.<name>.summary.*
_feature_projections.{index|name}.*      -> adaptors.<name>.feature.*
_feature_normalizer.*                    -> feature_normalizer.*
_intermediate_feature_normalizer.*       -> inter_feature_normalizer.*
"""

from __future__ import annotations

from pathlib import Path

import torch


def _head_spec(state: dict[str, torch.Tensor], prefix: str, source: Path) -> dict:
    """Dims, version and depth of one MLP head from its weights (official `get_mlp_info_from_state`)."""
    keys = {k.removeprefix(prefix) for k in state if k.startswith(prefix)}
    if "final.2.weight" in keys:
        version, out_key = "v2", "final.2.weight"
        num_inner = len({k.split(".")[1] for k in keys if k.startswith("blocks.")})
    elif "fc2.weight" in keys:
        version, out_key = "v1", "fc2.weight"
        num_inner = (
            len({k.split(".")[1] for k in keys if k.startswith("inner.") and k.endswith(".weight")}) // 2
        )
    else:
        raise ValueError(
            f"{source}: adaptor head {prefix}* is neither MLP v1 (fc2) nor v2 (final.2), e.g. {sorted(keys)[:4]}"
        )
    return {
        "hidden_dim": state[prefix + "fc1.weight"].shape[0],
        "output_dim": state[prefix + out_key].shape[0],
        "num_inner": num_inner,
        "mlp_version": version,
        "pre_norm": "pre_norm.0.weight" in keys,
    }


def adaptor_specs(args: dict, state: dict, hf_config: dict | None, source: Path) -> tuple[dict, dict]:
    """Adaptor specs and the `adaptors.<name>.{summary,feature}.*` weights, from index- or name-keyed heads."""
    teachers = args.get("teachers") or []
    per_teacher = args.get("cls_token_per_teacher", True)
    hf_adaptors = (hf_config or {}).get("adaptor_configs") or {}
    specs, weights = {}, {}
    for index, teacher in enumerate(teachers):
        name = teacher["name"]
        if name in specs:
            continue
        heads = {}
        for kind, stem in (("summary", "_heads"), ("feature", "_feature_projections")):
            prefix = next(
                (p for p in (f"{stem}.{name}.", f"{stem}.{index}.") if any(k.startswith(p) for k in state)),
                None,
            )
            if prefix is not None:
                heads[kind] = (prefix, _head_spec(state, prefix, source))
        if not heads:
            continue
        head_idx = teacher.get("token_slot", index) if per_teacher else 0
        head_idx = hf_adaptors.get(name, {}).get("head_idx", head_idx)
        spec = {"head_idx": int(head_idx), "summary": None, "feature": None}
        for kind, (prefix, head) in heads.items():
            if kind == "feature":
                factor = int(teacher.get("fd_upsample_factor") or 1)
                if head["output_dim"] % (factor * factor):
                    raise ValueError(
                        f"{source}: {prefix}* emits {head['output_dim']} channels, not a multiple of {factor}^2"
                    )
                head = {
                    **head,
                    "output_dim": head["output_dim"] // (factor * factor),
                    "upsample_factor": factor,
                }
            spec[kind] = head
            for key in [k for k in state if k.startswith(prefix)]:
                weights[f"adaptors.{name}.{kind}.{key.removeprefix(prefix)}"] = state.pop(key)
        specs[name] = spec
    stray = [k for k in state if k.startswith(("_heads.", "_feature_projections."))]
    if stray:
        raise ValueError(
            f"{source}: adaptor weights with no matching teacher in args.teachers, e.g. {stray[:3]}"
        )
    return specs, weights


def normalizer_weights(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    config, out = {}, {}
    if "_feature_normalizer.mean" in state:
        config["feature_normalizer"] = True
        for leaf in ("mean", "tx"):
            out[f"feature_normalizer.{leaf}"] = state.pop(f"_feature_normalizer.{leaf}")
    if "_intermediate_feature_normalizer.alphas" in state:
        rotation = state["_intermediate_feature_normalizer.rotation"]
        config["intermediate_feature_normalizer"] = {
            "num_intermediates": state["_intermediate_feature_normalizer.alphas"].shape[0],
            "rot_per_layer": rotation.ndim == 3,
        }
        for leaf in ("alphas", "rotation", "means"):
            out[f"inter_feature_normalizer.{leaf}"] = state.pop(f"_intermediate_feature_normalizer.{leaf}")
    return config, out
