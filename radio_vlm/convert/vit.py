"""The ViT student families: a `RadioModel` config from the weights, `args` and the student's builder, and the key map.

Two families share one key map: the timm ViTs (`base_model.*`) and the DINOv2-architecture students of
RADIO-g (`DinoWrapper`: `base_model.inner.*`, brought to the timm names first by `from_dinov2_names`).

base_model.patch_generator.{embedder (weight, DINOv2: bias), pos_embed, cls_token.token}
    -> backbone.embeddings.{patch_projection, position_embedding, cls_register_token}
base_model.blocks.i.{norm1, attn.qkv (split q/k/v), attn.proj, norm2, mlp.fc1, mlp.fc2, ls1/ls2}
    -> backbone.encoder.layer.i.{norm1, attention.{q,k,v}_proj, attention.o_proj, norm2, mlp.*, layer_scale1/2}
base_model.blocks.i.mlp.norm (the *_mlpnorm students)       -> backbone.encoder.layer.i.mlp.norm
base_model.blocks.i.mlp.{w12 (split gate/up), w3} (SwiGLU)  -> backbone.encoder.layer.i.mlp.{gate,up,down}_proj
base_model.norm (model_norm=True; DINOv2: always)            -> final_norm
input_conditioner.*                                          -> backbone.input_conditioner.*
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from .students import Student


def from_dinov2_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`DinoWrapper` keys as the timm ViT's: `base_model.inner.X` -> `base_model.X`, dropping what the official
    forward never reads (`mask_token`; the wrapper's own `base_model.input_conditioner`, the top-level one is used)."""
    out = {}
    for key, value in state.items():
        if key == "base_model.inner.mask_token" or key.startswith("base_model.input_conditioner."):
            continue
        out[key.replace("base_model.inner.", "base_model.", 1)] = value
    return out


def summary_idxs(args: dict, hf_state: dict[str, torch.Tensor], student: Student) -> list[int]:
    """TorchHub: first teacher index of each unique name with `use_summary`; HF: the saved buffer. The DINOv2
    students' summary is CLS 0 whatever the teachers say (their forward returns `y[:, 0]`)."""
    if student.family == "dinov2" or not args.get("cls_token_per_teacher", True):
        return [0]
    if "radio_model.summary_idxs" in hf_state:
        return hf_state["radio_model.summary_idxs"].tolist()
    first = {}
    for i, teacher in enumerate(args.get("teachers") or []):
        if teacher.get("use_summary", True):
            first.setdefault(teacher["name"], i)
    return sorted(first.values())


def num_cls_tokens(args: dict) -> int:
    """One CLS token per unique teacher name with `cls_token_per_teacher`, else one (create_model_from_args)."""
    if not args.get("cls_token_per_teacher"):
        return 1
    return len(dict.fromkeys(t["name"] for t in args.get("teachers") or []))


def _num_registers(args: dict, num_cls: int) -> int:
    """Official `ClsToken` rule: `cpe_num_registers` if set, else `register_multiple - num_cls % register_multiple`
    (so `register_multiple` registers, not 0, when it divides `num_cls`), else none."""
    if args.get("cpe_num_registers") is not None:
        return int(args["cpe_num_registers"])
    multiple = args.get("register_multiple")
    return multiple - num_cls % multiple if multiple else 0


def _mlp_ratio(hidden: int, dim: int) -> float:
    """A ratio r with int(dim * r) == hidden, as RadioMLP sizes its fc1 (hidden / dim can round just below)."""
    ratio = hidden / dim
    while int(dim * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """DINOv2's SwiGLUFFNFused (and transformers' RadioSwiGLUFFN) width: 2/3 of the MLP width, rounded up to 8."""
    return (int(int(dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def backbone_config(
    args: dict, state: dict[str, torch.Tensor], student: Student, name: str, summary: list[int], source: Path
) -> tuple[dict, dict]:
    """(`RadioConfig` kwargs, `RadioWithAdaptorsConfig` student-variant flags) for the student `name`.

    Every hyper-parameter the builder (+ `args.model_kwargs`) sets is checked against the weights; those no
    weight shows (attention heads, `scaled_ln`) come from the builder. Raises ValueError naming the difference.
    """

    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise ValueError(
                f"{source}: missing {key}; not a RADIO ViT checkpoint with a CPE patch generator"
            )
        return state[key]

    kwargs = (args.get("model_kwargs") or {}) if student.family == "vit" else {}
    built = {
        "embed_dim": kwargs.get("embed_dim", student.embed_dim),
        "depth": kwargs.get("depth", student.depth),
        "patch_size": kwargs.get("patch_size", student.patch_size),
    }
    num_heads = int(kwargs.get("num_heads", student.num_heads))
    mlp_ratio = float(kwargs.get("mlp_ratio", student.mlp_ratio))
    embed_dim, patch_dim = need("base_model.patch_generator.embedder.weight").shape
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"base_model\.blocks\.(\d+)\.", k))})
    found = {"embed_dim": embed_dim, "depth": depth, "patch_size": math.isqrt(patch_dim // 3)}
    swiglu = "base_model.blocks.0.mlp.w12.weight" in state
    if swiglu:
        found["SwiGLU hidden width"] = state["base_model.blocks.0.mlp.w3.weight"].shape[1]
        built["SwiGLU hidden width"] = _swiglu_hidden(embed_dim, mlp_ratio)
    else:
        found["MLP hidden width"] = need("base_model.blocks.0.mlp.fc1.weight").shape[0]
        built["MLP hidden width"] = int(embed_dim * mlp_ratio)
    layerscale = bool(kwargs["init_values"]) if "init_values" in kwargs else student.layerscale
    present = {
        "LayerScale (ls1/ls2)": any(
            re.match(r"base_model\.blocks\.0\.ls1\.(grandma|gamma)$", k) for k in state
        ),
        "qkv bias": "base_model.blocks.0.attn.qkv.bias" in state,
        "MLP norm (mlp.norm)": "base_model.blocks.0.mlp.norm.weight" in state,
        "SwiGLU MLP (mlp.w12/w3)": swiglu,
        "patch embedder bias": "base_model.patch_generator.embedder.bias" in state,
    }
    expected = {
        "LayerScale (ls1/ls2)": layerscale,
        "qkv bias": bool(kwargs.get("qkv_bias", True)),
        "MLP norm (mlp.norm)": student.mlp_norm,
        "SwiGLU MLP (mlp.w12/w3)": student.swiglu,
        "patch embedder bias": student.family == "dinov2",
    }
    disagree = [
        f"{what} {found[what]} in the weights, {built[what]} by the builder"
        for what in built
        if found[what] != built[what]
    ]
    disagree += [
        f"{what} {'present' if present[what] else 'absent'} in the weights, {'expected' if expected[what] else 'not built'}"
        for what in present
        if present[what] != expected[what]
    ]
    if disagree:
        raise ValueError(
            f"{source}: the weights disagree with args.model={name!r}"
            f"{' + args.model_kwargs' if kwargs else ''}: {'; '.join(disagree)}"
        )
    if embed_dim % num_heads:
        raise ValueError(f"{source}: {num_heads} attention heads do not divide the width {embed_dim}")

    scaled_ln = bool(kwargs.get("scaled_ln", False))
    if scaled_ln and not student.scaled_ln_argument:
        raise ValueError(
            f"{source}: args.model_kwargs.scaled_ln=True, but {name!r} takes no scaled_ln (only "
            "vit_giant_patch16_224 does; the official builder would fail)"
        )
    patch_size = found["patch_size"]
    if args.get("cpe_max_size") is None:
        raise ValueError(
            f"{source}: args.cpe_max_size is None: a ViT without the CPE patch generator is not supported"
        )
    side = math.isqrt(need("base_model.patch_generator.pos_embed").shape[1])
    if round(args["cpe_max_size"] / patch_size) != side:
        raise ValueError(
            f"{source}: args.cpe_max_size={args['cpe_max_size']} gives a {round(args['cpe_max_size'] / patch_size)}-patch "
            f"position table, but pos_embed holds {side}x{side}"
        )
    img_size = kwargs.get("img_size", student.img_size)
    if round(img_size / patch_size) == side:
        raise ValueError(
            f"{source}: the builder's img_size {img_size} equals args.cpe_max_size: the official patch generator then "
            "crops its position table instead of resizing it, which this converter does not reproduce"
        )
    num_cls = num_cls_tokens(args)
    num_tokens = need("base_model.patch_generator.cls_token.token").shape[0]
    expected_tokens = num_cls + _num_registers(args, num_cls)
    if num_tokens != expected_tokens:
        raise ValueError(
            f"{source}: cls_token.token has {num_tokens} rows but args give {num_cls} CLS tokens + "
            f"{expected_tokens - num_cls} registers (cls_token_per_teacher, teachers, cpe_num_registers, "
            "register_multiple): the checkpoint and its args disagree"
        )
    if student.family == "dinov2" and num_tokens != 1 + student.num_register_tokens:
        raise ValueError(
            f"{source}: the DINOv2 student has {num_tokens} CLS + register tokens, but its wrapper skips "
            f"1 + {student.num_register_tokens} (num_register_tokens) before the features: the official code "
            "slices its features there, which this converter does not reproduce"
        )
    backbone = {
        "hidden_size": embed_dim,
        "num_hidden_layers": depth,
        "num_attention_heads": num_heads,
        "mlp_ratio": mlp_ratio if swiglu else _mlp_ratio(found["MLP hidden width"], embed_dim),
        "use_swiglu_ffn": swiglu,
        "qkv_bias": present["qkv bias"],
        "patch_size": patch_size,
        "max_img_size": side * patch_size,
        "num_cls_tokens": num_cls,
        "num_registers": num_tokens - num_cls,
        "summary_idxs": summary,
        "norm_mean": need("input_conditioner.norm_mean").flatten().tolist(),
        "norm_std": need("input_conditioner.norm_std").flatten().tolist(),
    }
    # the DINOv2 wrapper always applies its final norm; a timm ViT keeps its own only with model_norm
    final_norm = student.family == "dinov2" or bool(args.get("model_norm"))
    if final_norm and "base_model.norm.weight" not in state:
        raise ValueError(
            f"{source}: args.model_norm=True but the weights have no base_model.norm (the final norm)"
        )
    variants = {
        "patch_embed_bias": present["patch embedder bias"],
        "mlp_norm": present["MLP norm (mlp.norm)"],
        "scaled_ln": scaled_ln,
        "final_norm": final_norm,
    }
    return backbone, variants


def backbone_weights(
    state: dict[str, torch.Tensor], final_norm: bool, source: Path
) -> dict[str, torch.Tensor]:
    """Move the TorchHub backbone keys out of `state`, renamed to ours (`backbone.*`, `final_norm.*`)."""
    out = {}
    fixed = {
        "base_model.patch_generator.embedder.weight": "backbone.embeddings.patch_projection.weight",
        "base_model.patch_generator.embedder.bias": "backbone.embeddings.patch_projection.bias",
        "base_model.patch_generator.pos_embed": "backbone.embeddings.position_embedding",
        "base_model.patch_generator.cls_token.token": "backbone.embeddings.cls_register_token",
        "input_conditioner.norm_mean": "backbone.input_conditioner.norm_mean",
        "input_conditioner.norm_std": "backbone.input_conditioner.norm_std",
    }
    if final_norm:
        fixed |= {f"base_model.norm.{leaf}": f"final_norm.{leaf}" for leaf in ("weight", "bias")}
    # LayerScale is `grandma` in HF-safe checkpoints (Jan 2025), `gamma` before (radio_official.md 1.1)
    renamed = {
        "attn.proj": "attention.o_proj",
        "ls1": "layer_scale1",
        "ls2": "layer_scale2",
        "mlp.w3": "mlp.down_proj",
    }
    for key in list(state):
        if key in fixed:
            out[fixed[key]] = state.pop(key)
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
        elif module == "mlp.w12":  # SwiGLU: the first half gates (silu), the second is multiplied
            for name, part in zip(("gate_proj", "up_proj"), value.chunk(2)):
                out[f"{target}mlp.{name}.{leaf}"] = part
        elif module in renamed:
            out[f"{target}{renamed[module]}.{'lambda1' if leaf in ('grandma', 'gamma') else leaf}"] = value
        elif module in ("norm1", "norm2", "mlp.fc1", "mlp.fc2", "mlp.norm"):
            out[f"{target}{module}.{leaf}"] = value
        else:
            raise ValueError(f"{source}: unsupported block weight {key}")
    return out
