"""The official ViT students' deviations from a plain ViT block, as small subclasses of transformers' layers.

RADIO's students are timm ViTs with a few builder options (radio/extra_timm_models.py): the `*_mlpnorm`
students (C-RADIO) put a LayerNorm inside every MLP, and the `scaled_ln` giants scale the block norms by
1/sqrt(block index + 1). `apply_student_variants` swaps these modules into transformers' `RadioModel`
in place, keeping its weight names; the DINOv2-architecture students' SwiGLU and LayerScale are the
backbone's own `use_swiglu_ffn` and LayerScale, and the patch bias and final norm live in `cpe.py` and the
model.

Exported next to the weights for `trust_remote_code`: imports only torch, transformers and sibling files.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import RadioModel
from transformers.models.radio.modeling_radio import RadioMLP

from .configuration_radio_with_adaptors import RadioWithAdaptorsConfig


class RadioMLPWithNorm(RadioMLP):
    """`fc2(norm(act(fc1(x))))`: timm's `Mlp` with a norm layer, as `vit_huge_patch16_224_mlpnorm` builds it
    (`nn.LayerNorm(hidden)`, eps 1e-5, after the activation). State-dict key of the norm: `mlp.norm.*`."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.norm = nn.LayerNorm(self.fc1.out_features, eps=1e-5)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.activation_fn(self.fc1(hidden_states))))


class ScaledLayerNorm(nn.LayerNorm):
    """`LayerNorm(x) * scale`, the official `ScaledLayerNorm` (arXiv 2502.05795) with scale 1/sqrt(i+1) in block i.

    The scale is a Python float, not a buffer: no checkpoint stores it (the official buffer is non-persistent,
    which is why the official remote code loads it uninitialised), and a float survives any device or dtype
    move. Multiplying a float32 tensor by it rounds the scale to float32, as the official float32 buffer does.
    """

    def __init__(self, normalized_shape: int, eps: float, scale: float) -> None:
        super().__init__(normalized_shape, eps=eps)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale:.6g}"


def apply_student_variants(backbone: RadioModel, config: RadioWithAdaptorsConfig) -> None:
    """Swap the MLPs (`mlp_norm`) and block norms (`scaled_ln`) of `backbone`'s layers for the official variants."""
    backbone_config = backbone.config
    for index, layer in enumerate(backbone.encoder.layer):
        if config.mlp_norm:
            layer.mlp = RadioMLPWithNorm(backbone_config)
        if config.scaled_ln:
            scale = 1.0 / math.sqrt(index + 1)
            for name in ("norm1", "norm2"):
                setattr(
                    layer,
                    name,
                    ScaledLayerNorm(backbone_config.hidden_size, backbone_config.layer_norm_eps, scale),
                )
