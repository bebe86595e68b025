"""Adaptor heads and feature normalizers of an official checkpoint -> `RadioWithAdaptorsConfig.adaptors` + weights.

_heads.{index|name}.*                    -> adaptors.<name>.summary.*   (MLP v1 / v2)
_feature_projections.{index|name}.*      -> adaptors.<name>.feature.*   (MLP v1 / v2, or "attn": blocks + MLP v2)
_feature_normalizer.*                    -> feature_normalizer.*
_intermediate_feature_normalizer.*       -> inter_feature_normalizer.*

A head's layout is read from its weights (official `get_mlp_info_from_state`) and checked against the layout
`args` declare for it; the mapped weights are then checked against the module this package builds for it, so a
head whose weights are laid out otherwise is refused by name (`--adaptors` converts the others).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from ..models.adaptors import build_mlp
from ..models.configuration_radio_with_adaptors import head_spec

# "attn" feature heads: timm Block names -> transformers RadioLayer names (the official head's LayerScale is `gamma`)
_ATTN_BLOCK_RENAMES = {
    "attn.proj": "attention.o_proj",
    "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1",
}


def _head_spec(keys: set[str], state: dict[str, torch.Tensor], prefix: str) -> dict | None:
    """Dims, version and depth of one head from its weights (official `get_mlp_info_from_state`), None when the
    keys are no known layout."""
    if {"mlp.fc1.weight", "mlp.final.2.weight", "blocks.0.attn.qkv.weight"} <= keys:
        return {
            "hidden_dim": state[prefix + "mlp.fc1.weight"].shape[0],
            "output_dim": state[prefix + "mlp.final.2.weight"].shape[0],
            "num_inner": 0,
            "mlp_version": "attn",
            "pre_norm": "mlp.pre_norm.0.weight" in keys,
            "num_blocks": len({k.split(".")[1] for k in keys if k.startswith("blocks.")}),
            "num_heads": 16,  # the official AttnFDHead hard-codes 16 heads; no weight shows them
        }
    if "final.2.weight" in keys and "fc1.weight" in keys:
        version, out_key = "v2", "final.2.weight"
        num_inner = len({k.split(".")[1] for k in keys if k.startswith("blocks.")})
    elif "fc2.weight" in keys and "fc1.weight" in keys:
        version, out_key = "v1", "fc2.weight"
        num_inner = (
            len({k.split(".")[1] for k in keys if k.startswith("inner.") and k.endswith(".weight")}) // 2
        )
    else:
        return None
    return {
        "hidden_dim": state[prefix + "fc1.weight"].shape[0],
        "output_dim": state[prefix + out_key].shape[0],
        "num_inner": num_inner,
        "mlp_version": version,
        "pre_norm": "pre_norm.0.weight" in keys,
    }


def _head_weights(
    keys: set[str], state: dict[str, torch.Tensor], prefix: str, version: str
) -> dict[str, torch.Tensor]:
    """The head's weights under our module's names (an "attn" head's qkv is split into q/k/v)."""
    out = {}
    for key in keys:
        value = state[prefix + key]
        match = re.match(r"blocks\.(\d+)\.(.+)$", key) if version == "attn" else None
        if match is None:
            out[key] = value
            continue
        block, rest = match.groups()
        if rest.startswith("attn.qkv."):
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3)):
                out[f"blocks.{block}.attention.{name}.{rest.removeprefix('attn.qkv.')}"] = part
            continue
        for old, new in _ATTN_BLOCK_RENAMES.items():
            if rest.startswith(old):
                rest = new + rest.removeprefix(old)
                break
        out[f"blocks.{block}.{rest}"] = value
    return out


def _misfit(spec: dict, kind: str, embed_dim: int, weights: dict[str, torch.Tensor]) -> str:
    """How `weights` differ from the state dict of the module built for `spec` ("" when they are exactly it)."""
    try:
        spec = head_spec("head", kind, spec)
    except ValueError as err:
        return str(err)
    factor = spec.get("upsample_factor", 1)
    with torch.device("meta"):
        expected = {k: v.shape for k, v in build_mlp(embed_dim, spec, factor * factor).state_dict().items()}
    got = {k: v.shape for k, v in weights.items()}
    problems = [
        f"unexpected {sorted(set(got) - set(expected))}",
        f"missing {sorted(set(expected) - set(got))}",
    ]
    problems.append(f"shapes {[k for k in set(got) & set(expected) if got[k] != expected[k]]}")
    return "" if got == expected else ", ".join(p for p in problems if not p.endswith("[]"))


def _declared_version(args: dict, teacher: dict, kind: str) -> str | None:
    """The layout the official GenericAdaptor builds for this head (per-teacher, else global `args`)."""
    summary = teacher.get("mlp_version", args.get("mlp_version"))
    if kind == "summary":
        return summary
    return teacher.get("spatial_mlp_version", args.get("spatial_mlp_version") or summary)


def adaptor_specs(
    args: dict,
    state: dict[str, torch.Tensor],
    hf_config: dict | None,
    embed_dim: int,
    source: Path,
    selected: list[str] | None = None,
    per_teacher_cls: bool = True,
) -> tuple[dict, dict]:
    """Adaptor specs and the `adaptors.<name>.{summary,feature}.*` weights, from index- or name-keyed heads.

    selected: the adaptor names to convert (default: every head the weights hold); the other heads' weights
        are dropped. per_teacher_cls: summary heads read their teacher's CLS slot (`token_slot`, else the
        teacher index); False makes every head read CLS 0 (`cls_token_per_teacher=False`, DINOv2 students).
    """
    teachers = args.get("teachers") or []
    names = list(dict.fromkeys(t["name"] for t in teachers))
    if selected is not None:
        unknown = [name for name in selected if name not in names]
        if unknown:
            raise ValueError(f"{source}: no adaptor {unknown} among the checkpoint's teachers {names}")
    hf_adaptors = (hf_config or {}).get("adaptor_configs") or {}
    specs, weights, unreadable, absent = {}, {}, {}, []
    for index, teacher in enumerate(teachers):
        name = teacher["name"]
        if name in specs or name in unreadable:
            continue
        heads = {}
        for kind, stem in (("summary", "_heads"), ("feature", "_feature_projections")):
            prefix = next(
                (p for p in (f"{stem}.{name}.", f"{stem}.{index}.") if any(k.startswith(p) for k in state)),
                None,
            )
            if prefix is not None:
                heads[kind] = (prefix, {k.removeprefix(prefix) for k in state if k.startswith(prefix)})
        if selected is not None and name not in selected:
            for prefix, keys in heads.values():
                for key in keys:
                    del state[prefix + key]
            continue
        if not heads:
            if selected is not None:
                raise ValueError(
                    f"{source}: --adaptors asks for {name!r}, but the checkpoint holds no weights for it (HF exports "
                    "carry no attention heads, and some carry no adaptors: convert the .pth.tar for them)"
                )
            absent.append(name)
            continue
        head_idx = hf_adaptors.get(name, {}).get("head_idx", teacher.get("token_slot", index))
        spec = {"head_idx": int(head_idx) if per_teacher_cls else 0, "summary": None, "feature": None}
        problems = []
        for kind, (prefix, keys) in heads.items():
            head = _head_spec(keys, state, prefix)
            if head is None or (kind == "summary" and head["mlp_version"] == "attn"):
                problems.append(
                    f"{prefix}* is neither MLP v1 (fc1, fc2), v2 (fc1, final.2) nor attn: {sorted(keys)}"
                )
                continue
            declared = _declared_version(args, teacher, kind)
            if declared is not None and declared != head["mlp_version"]:
                raise ValueError(
                    f"{source}: adaptor {name!r}: args declare its {kind} head {declared!r} but its weights "
                    f"({prefix}*) are {head['mlp_version']!r}: the checkpoint and its args disagree"
                )
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
            mapped = _head_weights(keys, state, prefix, head["mlp_version"])
            misfit = _misfit(head, kind, embed_dim, mapped)
            if misfit:
                problems.append(f"{prefix}* do not fit the {head['mlp_version']} layout ({misfit})")
                continue
            spec[kind] = head
            weights |= {f"adaptors.{name}.{kind}.{key}": value for key, value in mapped.items()}
            for key in keys:
                del state[prefix + key]
        if problems:
            unreadable[name] = problems
            continue
        specs[name] = spec
    if unreadable:
        readable = [n for n in names if n not in unreadable]
        details = "; ".join(f"{name!r}: {' / '.join(p)}" for name, p in unreadable.items())
        raise ValueError(
            f"{source}: adaptor heads this converter cannot read: {details}. Pass --adaptors "
            f"{','.join(readable) or 'NAMES'} to convert the others (adaptor_names={readable})"
        )
    if absent and hf_config is not None:  # an HF export can lack heads its .pth.tar has
        warnings.warn(
            f"{source}: no adaptor weights for the teachers {absent}, so the converted model has no heads for them "
            "(HF exports carry no attention heads, and some carry no adaptors: the .pth.tar has them)",
            stacklevel=3,
        )
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
