"""The ViT student family: `RadioModel` config inferred from the weights and `args`, and the backbone key map.

base_model.patch_generator.{embedder, pos_embed, cls_token.token}
    -> backbone.embeddings.{patch_projection, position_embedding, cls_register_token}
base_model.blocks.i.{norm1, attn.qkv (split q/k/v), attn.proj, norm2, mlp.fc1, mlp.fc2, ls1/ls2}
    -> backbone.encoder.layer.i.{norm1, attention.{q,k,v}_proj, attention.o_proj, norm2, mlp.*, layer_scale1/2}
input_conditioner.*                      -> backbone.input_conditioner.*
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

# timm names -> attention heads, for checkpoints whose args.model_kwargs do not say (radio_official.md 1.1)
TIMM_HEADS = {
    "vit_tiny": 3,
    "vit_small": 6,
    "vit_base": 12,
    "vit_large": 16,
    "vit_huge": 16,
    "vit_giant": 24,
    "vit_so400m": 16,
}


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def summary_idxs(args: dict, hf_state: dict[str, torch.Tensor]) -> list[int]:
    """TorchHub: first teacher index of each unique name with `use_summary`; HF: the saved buffer."""
    if "radio_model.summary_idxs" in hf_state:
        return hf_state["radio_model.summary_idxs"].tolist()
    if not args.get("cls_token_per_teacher", True):
        return [0]
    teachers, first = args.get("teachers") or [], {}
    for i, teacher in enumerate(teachers):
        if teacher.get("use_summary", True):
            first.setdefault(teacher["name"], i)
    return sorted(first.values())


def _num_registers(args: dict, num_cls: int) -> int:
    """Official `ClsToken` rule: `cpe_num_registers` if set, else `register_multiple - num_cls % register_multiple`
    (so `register_multiple` registers, not 0, when it divides `num_cls`), else none."""
    if args.get("cpe_num_registers") is not None:
        return int(args["cpe_num_registers"])
    multiple = args.get("register_multiple")
    return multiple - num_cls % multiple if multiple else 0


def backbone_config(
    args: dict, state: dict[str, torch.Tensor], summary_idxs: list[int], source: Path
) -> dict:
    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise ValueError(
                f"{source}: missing {key}; not a RADIO ViT checkpoint with a CPE patch generator"
            )
        return state[key]

    embed_dim, patch_dim = need("base_model.patch_generator.embedder.weight").shape
    patch_size = math.isqrt(patch_dim // 3)
    num_positions = need("base_model.patch_generator.pos_embed").shape[1]
    num_tokens = need("base_model.patch_generator.cls_token.token").shape[0]
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"base_model\.blocks\.(\d+)\.", k))})
    num_cls = (
        len(_unique([t["name"] for t in args.get("teachers") or []]))
        if args.get("cls_token_per_teacher")
        else 1
    )
    expected_tokens = num_cls + _num_registers(args, num_cls)
    if num_tokens != expected_tokens:
        raise ValueError(
            f"{source}: cls_token.token has {num_tokens} rows but args give {num_cls} CLS tokens + "
            f"{expected_tokens - num_cls} registers (cls_token_per_teacher, teachers, cpe_num_registers, "
            "register_multiple): the checkpoint and its args disagree"
        )
    kwargs = args.get("model_kwargs") or {}
    model_name = str(args.get("model", ""))
    heads = kwargs.get("num_heads") or next(
        (h for p, h in TIMM_HEADS.items() if model_name.startswith(p)), None
    )
    if heads is None:
        raise ValueError(f"{source}: cannot tell the number of attention heads of args.model={model_name!r}")
    unsupported = {
        "base_model.patch_generator.embedder.bias": "a patch-embedder bias (DINOv2-architecture students)",
        "base_model.blocks.0.mlp.norm.weight": "an MLP norm (the *_mlpnorm students)",
        "base_model.patch_generator.video_embedder.weight": "a video patch embedder",
    }
    for key, what in unsupported.items():
        if key in state:
            raise ValueError(f"{source}: {key} shows {what}, which transformers' RadioModel does not have")
    if args.get("model_norm") and "base_model.norm.weight" in state:
        raise ValueError(
            f"{source}: args.model_norm=True (a final LayerNorm), which RadioModel does not have"
        )
    return {
        "hidden_size": embed_dim,
        "num_hidden_layers": depth,
        "num_attention_heads": int(heads),
        "mlp_ratio": need("base_model.blocks.0.mlp.fc1.weight").shape[0] / embed_dim,
        "qkv_bias": "base_model.blocks.0.attn.qkv.bias" in state,
        "patch_size": patch_size,
        "max_img_size": math.isqrt(num_positions) * patch_size,
        "num_cls_tokens": num_cls,
        "num_registers": num_tokens - num_cls,
        "summary_idxs": summary_idxs,
        "norm_mean": need("input_conditioner.norm_mean").flatten().tolist(),
        "norm_std": need("input_conditioner.norm_std").flatten().tolist(),
    }


def backbone_weights(state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Rename TorchHub backbone keys to transformers' RadioModel keys (under `backbone.`)."""
    out = {}
    fixed = {
        "base_model.patch_generator.embedder.weight": "embeddings.patch_projection.weight",
        "base_model.patch_generator.pos_embed": "embeddings.position_embedding",
        "base_model.patch_generator.cls_token.token": "embeddings.cls_register_token",
        "input_conditioner.norm_mean": "input_conditioner.norm_mean",
        "input_conditioner.norm_std": "input_conditioner.norm_std",
    }
    # LayerScale is `grandma` in HF-safe checkpoints (Jan 2025), `gamma` before (radio_official.md 1.1)
    renamed = {"attn.proj": "attention.o_proj", "ls1": "layer_scale1", "ls2": "layer_scale2"}
    for key in list(state):
        if key in fixed:
            out["backbone." + fixed[key]] = state.pop(key)
            continue
        match = re.match(r"base_model\.blocks\.(\d+)\.(.+)\.(weight|bias|grandma|gamma)$", key)
        if not match:
            continue
        index, module, leaf = match.groups()
        target = f"backbone.encoder.layer.{index}."
        value = state.pop(key)
        if module == "attn.qkv":
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3)):
                out[f"{target}attention.{name}.{leaf}"] = part
        elif module in renamed:
            out[f"{target}{renamed[module]}.{'lambda1' if leaf in ('grandma', 'gamma') else leaf}"] = value
        elif module in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
            out[f"{target}{module}.{leaf}"] = value
        else:
            raise ValueError(f"{source}: unsupported block weight {key}")
    return out
