"""The student architectures official RADIO checkpoints name in `args.model`, as data.

Each timm / DINOv2 builder the official code registers (radio/extra_timm_models.py, radio/extra_models.py;
timm's own vit_*_patch16_224 for the older students) with the hyper-parameters it passes, which
`args.model_kwargs` may override (the DINOv2 builders ignore them). The E-RADIO builders are in `eradio.py`.
A name in neither is refused, as are the registered builders this converter does not reproduce.
"""

from __future__ import annotations

from typing import NamedTuple

from .checkpoint import check_constructor


class Student(NamedTuple):
    family: str  # "vit" (timm VisionTransformer) | "dinov2" (DinoVisionTransformer in DinoWrapper)
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    layerscale: bool = False  # init_values set: ls1/ls2 weights
    mlp_norm: bool = False  # LayerNorm inside every MLP (the *_mlpnorm builder)
    swiglu: bool = False  # DINOv2 "swiglufused" FFN
    scaled_ln_argument: bool = False  # the builder takes scaled_ln=
    img_size: int = 224  # the builder's timm position table (replaced by CPE)
    num_register_tokens: int = 0  # DINOv2: the wrapper's count, which slices the features


def _vit(patch: int, dim: int, depth: int, heads: int, **extra) -> Student:
    return Student("vit", patch, dim, depth, heads, **extra)


STUDENTS: dict[str, Student] = {
    # timm's registry
    "vit_tiny_patch16_224": _vit(16, 192, 12, 3),
    "vit_small_patch16_224": _vit(16, 384, 12, 6),
    "vit_base_patch16_224": _vit(16, 768, 12, 12),
    "vit_large_patch16_224": _vit(16, 1024, 24, 16),
    "vit_huge_patch14_224": _vit(14, 1280, 32, 16),  # RADIOv1 (ViT-H/14)
    # radio/extra_timm_models.py
    "vit_tiny_patch14_224": _vit(14, 192, 12, 3),
    "vit_small_patch14_224": _vit(14, 384, 12, 6),
    "vit_base_patch14_224": _vit(14, 768, 12, 12),
    "vit_base_patch16_v2_224": _vit(16, 768, 12, 12, layerscale=True, img_size=518 * 16 // 14),
    "vit_large_patch16_v2_224": _vit(16, 1024, 24, 16, layerscale=True, img_size=518 * 16 // 14),
    "vit_so400m_patch16_224": _vit(16, 1152, 27, 16, mlp_ratio=4304 / 1152),
    "vit_so400m_v2_patch16_224": _vit(16, 1152, 27, 16, mlp_ratio=4320 / 1152),  # 4304 rounded up to 32
    "vit_huge_patch16_224": _vit(16, 1280, 32, 16),
    "vit_huge_patch16_224_mlpnorm": _vit(16, 1280, 32, 16, mlp_norm=True),
    "vit_giant_patch16_224": _vit(16, 1536, 40, 24, scaled_ln_argument=True),
    "vit_bigG_patch14_224": _vit(14, 1664, 48, 16, layerscale=True),
    # radio/extra_models.py: dinov2_vit{l,g}14_reg, wrapped (patch 14, LayerScale 1.0, 4 registers)
    "dino_v2_l_student": Student(
        "dinov2", 14, 1024, 24, 16, layerscale=True, img_size=518, num_register_tokens=4
    ),
    "dino_v2_g_student": Student(
        "dinov2", 14, 1536, 40, 24, layerscale=True, swiglu=True, img_size=518, num_register_tokens=4
    ),
}

# registered by the official code, but not what this converter builds
UNSUPPORTED_STUDENTS: dict[str, str] = {
    "vit_large_dyt_patch16_224": "DyT (tanh) layers instead of LayerNorm",
    "paligemma_896_student": "a PaliGemma vision tower loaded from transformers",
    **{
        f"radio1d_{s}_patch16_224": "RADIO1D (1D token compression; no released checkpoints)"
        for s in ("large", "so400m", "huge")
    },
    **{
        f"vit_{s}_patch16_xpos": "xPos rotary position embeddings"
        for s in ("base", "large", "huge", "giant", "bigG")
    },
    **{f"hybrid_{s}": "the dual hybrid ViT" for s in ("base", "large", "huge")},
}

# keyword arguments of a custom DINOv2 student's `DinoVisionTransformer(...)` (a constructor JSON) and the
# values the official `dinov2_vit*14_reg` builders use where this converter needs them fixed
DINOV2_CONSTRUCTOR_MAPPED = {
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "ffn_layer",
    "init_values",
    "num_register_tokens",
}
DINOV2_CONSTRUCTOR_INERT = {  # position-table and training settings, replaced or unused once CPE is on
    "img_size",
    "interpolate_antialias",
    "interpolate_offset",
    "drop_path_rate",
    "drop_path_uniform",
    "weights",
}
# argument -> (the value this converter reproduces, DinoVisionTransformer's default)
DINOV2_CONSTRUCTOR_REQUIRED = {
    "block_chunks": (0, 1),  # chunked blocks have other state-dict names; _make_dinov2_model passes 0
    "in_chans": (3, 3),
    "qkv_bias": (True, True),
    "proj_bias": (True, True),
    "ffn_bias": (True, True),
}


def dinov2_student_from_constructor(name: str, constructor: dict) -> Student:
    """A `Student` from a custom DINOv2 student's constructor JSON: `{"kwargs": {DinoVisionTransformer kwargs}}`
    (the fixture's form) or the kwargs themselves. Raises ValueError naming any argument it cannot reproduce."""
    kwargs = constructor.get("kwargs", constructor)
    known = DINOV2_CONSTRUCTOR_MAPPED | DINOV2_CONSTRUCTOR_INERT
    check_constructor(kwargs, f"DINOv2 student {name!r} constructor", known, DINOV2_CONSTRUCTOR_REQUIRED)
    ffn = kwargs.get("ffn_layer", "mlp")
    if ffn not in ("mlp", "swiglu", "swiglufused"):
        raise ValueError(
            f"DINOv2 student {name!r} constructor: ffn_layer={ffn!r} (supported: mlp, swiglu, swiglufused)"
        )
    missing = {"embed_dim", "depth", "num_heads"} - set(kwargs)
    if missing:
        raise ValueError(f"DINOv2 student {name!r} constructor: needs {sorted(missing)}")
    return Student(
        "dinov2",
        int(kwargs.get("patch_size", 16)),
        int(kwargs["embed_dim"]),
        int(kwargs["depth"]),
        int(kwargs["num_heads"]),
        mlp_ratio=float(kwargs.get("mlp_ratio", 4.0)),
        layerscale=bool(kwargs.get("init_values")),
        swiglu=ffn != "mlp",
        img_size=int(kwargs.get("img_size", 224)),
        num_register_tokens=int(kwargs.get("num_register_tokens", 0)),
    )
