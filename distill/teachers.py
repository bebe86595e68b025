"""Frozen teachers for multi-teacher distillation: a registry of `TeacherSpec`s and their loaders.

A teacher is found by its exact registered name (`get_teacher_spec("dinov2_vitg14_reg")`), never by
substring. Every loader kind (`open_clip`, `hf_clip`, `hf_siglip`, `hf_dinov2`, `hf_dinov2_reg`,
`segment_anything`) has a tiny randomly initialised twin (`tiny_clip`, `tiny_hf_clip`, ...) that is built
by the same loader code from a small architecture dict (`spec.config`), so tests exercise the whole
registry on a CPU without downloading anything. Real teachers load from local paths (`spec.source`).

`load_teacher(spec)` returns a frozen `Teacher` module: `teacher(images)` takes images already resized to
`spec.resolution` and normalised with `spec.mean`/`spec.std`, (B, 3, R, R), and returns a
`TeacherOutput(summary (B, C) | None, features (B, h, w, D))` in fp32.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import image_utils

from radio_vlm.evaluation.sam import SAM_ARCHS, build_sam

# Normalisation constants, as the teachers were trained (transformers.image_utils: OpenAI CLIP's; ImageNet's for
# DINOv2 and SAM, whose build_sam.py pixel_mean/std are these x 255; 0.5 for SigLIP's image processor)
OPENAI_CLIP_MEAN, OPENAI_CLIP_STD = tuple(image_utils.OPENAI_CLIP_MEAN), tuple(image_utils.OPENAI_CLIP_STD)
IMAGENET_MEAN, IMAGENET_STD = (
    tuple(image_utils.IMAGENET_DEFAULT_MEAN),
    tuple(image_utils.IMAGENET_DEFAULT_STD),
)
SIGLIP_MEAN, SIGLIP_STD = tuple(image_utils.IMAGENET_STANDARD_MEAN), tuple(image_utils.IMAGENET_STANDARD_STD)

LOADERS = ("open_clip", "hf_clip", "hf_siglip", "hf_dinov2", "hf_dinov2_reg", "segment_anything")


@dataclass(frozen=True)
class TeacherSpec:
    """Everything needed to build one teacher and to feed it.

    Outputs are named: `summary` and `features` pick one of the outputs the loader provides
    (see `OUTPUTS`), e.g. CLIP's projected, text-aligned "image_embeds" or DINOv2's "cls".
    """

    name: str  # exact registry name, e.g. "dinov2_vitg14_reg"
    loader: str  # one of LOADERS
    resolution: int  # square input size in px the teacher sees
    patch_size: int  # px per patch; the spatial grid is resolution // patch_size
    mean: tuple[float, float, float]  # per-channel normalisation of [0, 1] RGB input
    std: tuple[float, float, float]
    summary: str | None  # which output is the summary vector; None for teachers without one (SAM)
    features: str  # which output is the spatial feature map
    summary_dim: int | None  # C of the summary, None when summary is None
    feature_dim: int  # D of the spatial features
    source: str | None = (
        None  # local weights: open_clip file or "local-dir:" folder, HF folder, SAM checkpoint
    )
    arch: str | None = None  # open_clip model config name (e.g. "ViT-H-14-378-quickgelu")
    # Architecture: open_clip constructor overrides, HF config fields (used only without a source folder),
    # SAM ImageEncoderViT arguments.
    config: Mapping[str, Any] | None = field(default=None, hash=False)
    random_weights: bool = False  # tiny twins: without a source, build with random weights instead of failing
    seed: int = 0  # RNG seed for random initialisation (tiny twins are deterministic given it)

    def __post_init__(self) -> None:
        if self.loader not in LOADERS:
            raise ValueError(
                f"teacher {self.name!r}: unknown loader {self.loader!r}; expected one of {LOADERS}"
            )
        if self.resolution < self.patch_size:
            raise ValueError(
                f"teacher {self.name!r}: resolution {self.resolution} < patch_size {self.patch_size}"
            )
        available = OUTPUTS[self.loader]
        for role, output in (("summary", self.summary), ("features", self.features)):
            if output is not None and output not in available:
                raise ValueError(
                    f"teacher {self.name!r}: {role}={output!r} is not an output of loader "
                    f"{self.loader!r}; choose one of {available}"
                )
        if (self.summary is None) != (self.summary_dim is None):
            raise ValueError(f"teacher {self.name!r}: summary and summary_dim must both be set or both None")
        needs = {"open_clip": ("arch", "an open_clip model config name"),
                 "segment_anything": ("config", "ImageEncoderViT arguments")}.get(self.loader)  # fmt: skip
        local_dir = self.source is not None and self.source.startswith("local-dir:")
        if needs and getattr(self, needs[0]) is None and not local_dir:
            raise ValueError(f"teacher {self.name!r}: loader {self.loader!r} needs {needs[0]} ({needs[1]})")
        if self.random_weights and self.config is None:
            raise ValueError(f"teacher {self.name!r}: random_weights needs an architecture in config")

    @property
    def grid_size(self) -> int:
        """Side of the teacher's square feature grid, in patches (strided patch convs drop the remainder:
        SigLIP so400m/14 at 384 px gives 27)."""
        return self.resolution // self.patch_size

    @property
    def random_init(self) -> bool:
        """True when the teacher is built with random weights (a tiny twin without a source)."""
        return self.random_weights and self.source is None


@dataclass
class TeacherOutput:
    """summary: (B, C) fp32 or None; features: (B, h, w, D) fp32."""

    summary: torch.Tensor | None
    features: torch.Tensor


# ----------------------------------------------------------------------------------------------------------
# Registry


_REGISTRY: dict[str, TeacherSpec] = {}


def register_teacher(spec: TeacherSpec, overwrite: bool = False) -> TeacherSpec:
    """Add `spec` to the registry under `spec.name`."""
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"teacher {spec.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[spec.name] = spec
    return spec


def get_teacher_spec(name: str, **overrides: Any) -> TeacherSpec:
    """The registered spec called exactly `name`, with fields replaced by `overrides` (e.g. source=...)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown teacher {name!r}; registered teachers: {', '.join(list_teachers())}")
    spec = _REGISTRY[name]
    return dataclasses.replace(spec, **overrides) if overrides else spec


def list_teachers() -> list[str]:
    """Names of all registered teachers, sorted."""
    return sorted(_REGISTRY)


# ----------------------------------------------------------------------------------------------------------
# Loader adaptors: each wraps a backbone and returns its named outputs, tokens as (B, N, D) or (B, h, w, D).


class _OpenClipVisual(nn.Module):
    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual
        self.visual.output_tokens = True  # open_clip returns (pooled @ proj, ln_post(patch tokens))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        image_embeds, tokens = self.visual(images)
        return {"image_embeds": image_embeds, "patch_tokens": tokens}


class _HFVision(nn.Module):
    def __init__(self, model: nn.Module, loader: str) -> None:
        super().__init__()
        self.model = model
        self.loader = loader
        self.num_prefix = 1 + getattr(model.config, "num_register_tokens", 0)  # CLS (+ registers)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(pixel_values=images)
        hidden = out.last_hidden_state
        if self.loader == "hf_clip":
            # CLIP's last_hidden_state precedes post_layernorm; apply it to every token so the spatial
            # features match open_clip's ln_post(tokens) for the same weights.
            normed = self.model.vision_model.post_layernorm(hidden)
            return {"image_embeds": out.image_embeds, "cls": normed[:, 0], "patch_tokens": normed[:, 1:]}
        if self.loader == "hf_siglip":  # no CLS token; the MAP head's pooled output is the embedding
            return {"pooler": out.pooler_output, "patch_tokens": hidden}
        # DINOv2: last_hidden_state is already layer-normed; registers sit between CLS and patches.
        return {"cls": hidden[:, 0], "patch_tokens": hidden[:, self.num_prefix :]}


class _SamEncoder(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder.neck = nn.Identity()  # features before the neck (AM-RADIO matches SAM's ViT output)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = self.encoder(images)  # Identity neck receives (B, D, h, w)
        return {"patch_tokens": tokens.permute(0, 2, 3, 1)}


# Outputs each loader's adaptor provides (used to validate specs).
OUTPUTS: dict[str, tuple[str, ...]] = {
    "open_clip": ("image_embeds", "patch_tokens"),
    "hf_clip": ("image_embeds", "cls", "patch_tokens"),
    "hf_siglip": ("pooler", "patch_tokens"),
    "hf_dinov2": ("cls", "patch_tokens"),
    "hf_dinov2_reg": ("cls", "patch_tokens"),
    "segment_anything": ("patch_tokens",),
}


def _require_source(spec: TeacherSpec, kind: str) -> Path:
    if spec.source is None:
        raise ValueError(
            f"teacher {spec.name!r} needs local weights: set its source to {kind} "
            f"(get_teacher_spec({spec.name!r}, source=...) or `source:` in the config's teacher entry)"
        )
    path = Path(spec.source.removeprefix("local-dir:")).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"teacher {spec.name!r}: source {spec.source!r} does not exist; expected {kind}"
        )
    return path


def _open_clip_model(spec: TeacherSpec) -> nn.Module:
    """The whole open_clip model (image and text towers)."""
    import open_clip

    overrides = dict(spec.config or {})  # architecture overrides of the built-in config `spec.arch`
    if spec.random_init:
        return open_clip.create_model(spec.arch, load_weights=False, **overrides)
    if spec.source is not None and spec.source.startswith("local-dir:"):
        _require_source(spec, "a folder with open_clip_config.json and open_clip weights")
        return open_clip.create_model(spec.source, weights_only=True)
    path = _require_source(spec, f"an open_clip weights file for {spec.arch!r}")
    return open_clip.create_model(
        spec.arch, pretrained=str(path), weights_only=True, require_pretrained=True, **overrides
    )


def _hf_class(loader: str) -> type:
    import transformers

    return {
        "hf_clip": transformers.CLIPVisionModelWithProjection,
        "hf_siglip": transformers.SiglipVisionModel,
        "hf_dinov2": transformers.Dinov2Model,
        "hf_dinov2_reg": transformers.Dinov2WithRegistersModel,
    }[loader]


def _hf_model(spec: TeacherSpec) -> nn.Module:
    cls = _hf_class(spec.loader)
    if spec.random_init:
        return cls(cls.config_class(**spec.config))
    path = _require_source(spec, f"a local Hugging Face folder for {cls.__name__} (config.json + weights)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"teacher {spec.name!r}: {path} has no config.json; point source at a folder written by "
            f"save_pretrained (e.g. a snapshot of the model's Hub repo)"
        )
    return cls.from_pretrained(path)  # also reads the vision tower of full CLIPModel/SiglipModel folders


def _sam_model(spec: TeacherSpec) -> nn.Module:
    """segment_anything's whole `Sam` (image encoder, prompt encoder, mask decoder) at the spec's encoder size;
    a checkpoint's encoder weights are loaded (the teacher only runs the encoder)."""
    from radio_vlm.convert import read_state_dict

    path = (
        None
        if spec.random_init
        else _require_source(spec, "a segment_anything checkpoint (.pth/.safetensors)")
    )
    sam = build_sam(spec.config)
    if path is not None:
        state = read_state_dict(path)
        # Full SAM checkpoints prefix the encoder with "image_encoder."; encoder-only ones do not.
        if any(k.startswith("image_encoder.") for k in state):
            state = {
                k.removeprefix("image_encoder."): v
                for k, v in state.items()
                if k.startswith("image_encoder.")
            }
        sam.image_encoder.load_state_dict(state)
    return sam


# loader -> (the library's whole model, the image tower the teacher runs)
_LOADERS: dict[str, tuple[Callable[[TeacherSpec], nn.Module], Callable[[nn.Module, str], nn.Module]]] = {
    "open_clip": (_open_clip_model, lambda model, _: _OpenClipVisual(model.visual)),
    "segment_anything": (_sam_model, lambda model, _: _SamEncoder(model.image_encoder)),
    **{kind: (_hf_model, _HFVision) for kind in ("hf_clip", "hf_siglip", "hf_dinov2", "hf_dinov2_reg")},
}


def build_teacher_model(spec: TeacherSpec) -> nn.Module:
    """The whole model of `spec` as its library builds it (open_clip CLIP with its text tower, segment_anything
    Sam with prompt encoder and mask decoder, the HF model), deterministic for tiny twins (seeded by spec.seed,
    the caller's RNG untouched). `load_teacher` runs the image tower of exactly this model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return _LOADERS[spec.loader][0](spec)


# ----------------------------------------------------------------------------------------------------------
# The frozen teacher


def default_teacher_dtype(device: torch.device) -> torch.dtype:
    """bf16 on accelerators that support it, fp32 elsewhere (CPU bf16 matmuls are slow)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


class Teacher(nn.Module):
    """A frozen teacher in eval mode; `forward` runs under inference mode and returns fp32 outputs."""

    def __init__(self, spec: TeacherSpec, backbone: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> Teacher:
        """Teachers always stay in eval mode, whatever a caller asks (no dropout, fixed norms)."""
        return super().train(False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def forward(self, images: torch.Tensor) -> TeacherOutput:
        """images: (B, 3, R, R) resized to spec.resolution and normalised -> TeacherOutput in fp32."""
        spec = self.spec
        if (
            images.ndim != 4
            or images.shape[1] != 3
            or images.shape[-2:] != (spec.resolution, spec.resolution)
        ):
            raise ValueError(
                f"teacher {spec.name!r} takes (B, 3, {spec.resolution}, {spec.resolution}) images, got "
                f"{tuple(images.shape)}; resize to the teacher's resolution first (distill.data does this)"
            )
        with torch.inference_mode():
            outputs = self.backbone(images.to(device=self.device, dtype=self.dtype))
        features, summary = (
            outputs[spec.features],
            outputs[spec.summary] if spec.summary is not None else None,
        )
        self._check_shapes(summary, features)
        features = features.reshape(images.shape[0], spec.grid_size, spec.grid_size, spec.feature_dim)
        # Copy out of inference mode (and to fp32) so the targets can enter autograd-tracked losses.
        return TeacherOutput(
            summary=None if summary is None else summary.to(torch.float32, copy=True),
            features=features.to(torch.float32, copy=True),
        )

    def _check_shapes(self, summary: torch.Tensor | None, features: torch.Tensor) -> None:
        spec = self.spec
        tokens = math.prod(features.shape[1:-1])
        summary_dim = None if summary is None else summary.shape[-1]
        if (tokens, features.shape[-1], summary_dim) != (
            spec.grid_size**2,
            spec.feature_dim,
            spec.summary_dim,
        ):
            raise ValueError(
                f"teacher {spec.name!r} produced {tokens} feature tokens of dim {features.shape[-1]} and summary "
                f"dim {summary_dim}, but its spec says {spec.grid_size}x{spec.grid_size} tokens of dim "
                f"{spec.feature_dim} and summary dim {spec.summary_dim}; the weights at {spec.source!r} belong "
                f"to a different model (or the spec's patch_size/dims are wrong)"
            )


def load_teacher(
    spec: TeacherSpec | str, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Teacher:
    """Build `spec` (or a registered name), frozen, on `device` (default: cuda if available) in `dtype`
    (default: bf16 where supported, else fp32)."""
    if isinstance(spec, str):
        spec = get_teacher_spec(spec)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or default_teacher_dtype(device)
    backbone = _LOADERS[spec.loader][1](build_teacher_model(spec), spec.loader)
    return Teacher(spec, backbone.to(device=device, dtype=dtype))


# ----------------------------------------------------------------------------------------------------------
# Registered teachers: the paper's (AM-RADIO section 4) and one tiny twin per loader kind.


_PAPER_TEACHERS = [
    # DFN CLIP ViT-H/14 at 378 px: open_clip "ViT-H-14-378-quickgelu" (apple/DFN5B-CLIP-ViT-H-14-378).
    TeacherSpec("dfn_clip_vith14_378", "open_clip", 378, 14, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                "image_embeds", "patch_tokens", 1024, 1280, arch="ViT-H-14-378-quickgelu"),
    # OpenAI CLIP ViT-L/14 at 336 px (openai/clip-vit-large-patch14-336).
    TeacherSpec("openai_clip_vitl14_336", "hf_clip", 336, 14, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                "image_embeds", "patch_tokens", 768, 1024),
    # SigLIP so400m/14 at 384 px (google/siglip-so400m-patch14-384).
    TeacherSpec("siglip_so400m_384", "hf_siglip", 384, 14, SIGLIP_MEAN, SIGLIP_STD,
                "pooler", "patch_tokens", 1152, 1152),
    # DINOv2 ViT-g/14 with registers, run at 224 px as in the paper (facebook/dinov2-with-registers-giant).
    TeacherSpec("dinov2_vitg14_reg", "hf_dinov2_reg", 224, 14, IMAGENET_MEAN, IMAGENET_STD,
                "cls", "patch_tokens", 1536, 1536),
    # DINOv2 ViT-g/14 without registers (facebook/dinov2-giant).
    TeacherSpec("dinov2_vitg14", "hf_dinov2", 224, 14, IMAGENET_MEAN, IMAGENET_STD,
                "cls", "patch_tokens", 1536, 1536),
    # SAM ViTDet-H/L/B at 1024 px (sam_vit_{h,l,b}_*.pth): features before the neck, no summary.
    TeacherSpec("sam_vith", "segment_anything", 1024, 16, IMAGENET_MEAN, IMAGENET_STD,
                None, "patch_tokens", None, 1280, config=SAM_ARCHS["vit_h"]),
    TeacherSpec("sam_vitl", "segment_anything", 1024, 16, IMAGENET_MEAN, IMAGENET_STD,
                None, "patch_tokens", None, 1024, config=SAM_ARCHS["vit_l"]),
    TeacherSpec("sam_vitb", "segment_anything", 1024, 16, IMAGENET_MEAN, IMAGENET_STD,
                None, "patch_tokens", None, 768, config=SAM_ARCHS["vit_b"]),
]  # fmt: skip

# Tiny twins: hidden 32, 2 layers, each at its own resolution and patch size so tests see mismatched grids.
_TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
_TINY_TEACHERS = [
    TeacherSpec("tiny_clip", "open_clip", 64, 16, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                "image_embeds", "patch_tokens", 24, 32, arch="ViT-B-16", random_weights=True,
                config={"embed_dim": 24,
                        "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 32, "layers": 2, "head_width": 16},
                        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}),
    TeacherSpec("tiny_hf_clip", "hf_clip", 48, 12, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                "image_embeds", "patch_tokens", 24, 32, seed=1, random_weights=True,
                config={**_TINY_VIT, "intermediate_size": 64, "image_size": 48, "patch_size": 12,
                        "projection_dim": 24}),
    TeacherSpec("tiny_siglip", "hf_siglip", 64, 8, SIGLIP_MEAN, SIGLIP_STD,
                "pooler", "patch_tokens", 32, 32, seed=2, random_weights=True,
                config={**_TINY_VIT, "intermediate_size": 64, "image_size": 64, "patch_size": 8}),
    TeacherSpec("tiny_dinov2", "hf_dinov2", 56, 14, IMAGENET_MEAN, IMAGENET_STD,
                "cls", "patch_tokens", 32, 32, seed=3, random_weights=True,
                config={**_TINY_VIT, "mlp_ratio": 2, "image_size": 56, "patch_size": 14}),
    TeacherSpec("tiny_dinov2_reg", "hf_dinov2_reg", 70, 14, IMAGENET_MEAN, IMAGENET_STD,
                "cls", "patch_tokens", 32, 32, seed=4, random_weights=True,
                config={**_TINY_VIT, "mlp_ratio": 2, "image_size": 70, "patch_size": 14, "num_register_tokens": 2}),
    TeacherSpec("tiny_sam", "segment_anything", 128, 16, IMAGENET_MEAN, IMAGENET_STD,
                None, "patch_tokens", None, 32, seed=5, random_weights=True,
                config={"img_size": 128, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2,
                        "window_size": 4, "global_attn_indexes": (1,), "out_chans": 16}),
]  # fmt: skip

for _spec in _PAPER_TEACHERS + _TINY_TEACHERS:
    register_teacher(_spec)
