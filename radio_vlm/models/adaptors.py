"""Per-teacher adaptor heads (official MLP v1 / v2 / attention layouts) and the PHI-S feature normalizers.

Exported next to the weights for `trust_remote_code`: imports only torch and transformers.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import RadioConfig
from transformers.models.radio.modeling_radio import RadioLayer


class MLPv1(nn.Module):
    """Official `MLP` ("v1"): fc1 -> LN -> ReLU -> num_inner x (Linear, LN, ReLU) -> fc2.

    State-dict keys `fc1, norm, inner.{3k}, inner.{3k+1}, fc2` as in the official checkpoints.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_inner: int = 0):
        super().__init__()
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        inner = []
        for _ in range(num_inner):
            inner += [nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU()]
        self.inner = nn.Sequential(*inner)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., input_dim) -> (..., output_dim)"""
        return self.fc2(self.inner(torch.relu(self.norm(self.fc1(x)))))


class MLPv2(nn.Module):
    """Official `MLP2` ("v2"): [LN, GELU] -> fc1 -> num_inner x residual(LN, GELU, Linear) -> LN -> GELU -> Linear.

    With `num_inner=0` this is the AM-RADIO paper's 2-layer MLP with LayerNorm and GELU in between.
    State-dict keys `pre_norm.0, fc1, blocks.{k}.{0,2}, final.{0,2}` as in the official checkpoints.
    """

    def __init__(
        self, input_dim: int, hidden_dim: int, output_dim: int, num_inner: int = 0, pre_norm: bool = False
    ):
        super().__init__()
        self.pre_norm = nn.Sequential(nn.LayerNorm(input_dim), nn.GELU()) if pre_norm else nn.Identity()
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim))
            for _ in range(num_inner)
        )
        self.final = nn.Sequential(nn.LayerNorm(hidden_dim), nn.GELU(), nn.Linear(hidden_dim, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., input_dim) -> (..., output_dim)"""
        x = self.fc1(self.pre_norm(x))
        for block in self.blocks:
            x = x + block(x)
        return self.final(x)


class AttentionFeatureHead(nn.Module):
    """Official `AttnFDHead` (`spatial_mlp_version='attn'`, C-RADIOv4): transformer blocks over the patch
    tokens, then an MLP v2 head without inner blocks.

    Each block is timm's `Block(D, num_heads, init_values=1e-5)` as the official code builds it: pre-norm,
    LayerNorm eps 1e-6, no qkv bias, LayerScale, MLP ratio 4 with exact GELU. They are transformers' own
    `RadioLayer`s, so the state-dict keys are `blocks.{i}.{norm1, attention.{q,k,v,o}_proj, layer_scale1,
    norm2, mlp.fc1, mlp.fc2, layer_scale2}` and `mlp.{fc1, final.0, final.2}`.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_blocks: int = 2,
        num_heads: int = 16,
        pre_norm: bool = False,
        attn_implementation: str = "sdpa",
    ):
        super().__init__()
        config = RadioConfig(
            hidden_size=input_dim,
            num_hidden_layers=num_blocks,
            num_attention_heads=num_heads,
            mlp_ratio=4.0,
            qkv_bias=False,
            layerscale_value=1e-5,
            layer_norm_eps=1e-6,
            attn_implementation=attn_implementation,
        )
        self.blocks = nn.ModuleList(RadioLayer(config) for _ in range(num_blocks))
        self.mlp = MLPv2(input_dim, hidden_dim, output_dim, num_inner=0, pre_norm=pre_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, input_dim) patch tokens of one grid per image -> (B, T, output_dim)"""
        for block in self.blocks:
            x = block(x)
        return self.mlp(x)


def build_mlp(
    input_dim: int, spec: dict, output_multiplier: int = 1, attn_implementation: str = "sdpa"
) -> nn.Module:
    """A head from a config spec (`hidden_dim`, `output_dim`, `num_inner`, `mlp_version`, `pre_norm`; an "attn"
    head also `num_blocks`, `num_heads`)."""
    output_dim = spec["output_dim"] * output_multiplier
    if spec["mlp_version"] == "attn":
        return AttentionFeatureHead(
            input_dim,
            spec["hidden_dim"],
            output_dim,
            spec["num_blocks"],
            spec["num_heads"],
            spec.get("pre_norm", False),
            attn_implementation,
        )
    if spec["mlp_version"] == "v1":
        if spec.get("pre_norm"):
            raise ValueError("mlp_version 'v1' has no pre_norm; use 'v2'")
        return MLPv1(input_dim, spec["hidden_dim"], output_dim, spec["num_inner"])
    return MLPv2(input_dim, spec["hidden_dim"], output_dim, spec["num_inner"], spec.get("pre_norm", False))


class RadioAdaptorHead(nn.Module):
    """One teacher's heads: `summary` reads CLS token `head_idx`, `feature` maps every patch token.

    A feature head with `upsample_factor` u emits `u*u*C` channels per token, laid out as the official
    `b (h w) (u1 u2 c) -> b (h u1 w u2) c`, i.e. C-channel features on a u-times denser row-major grid.
    Outputs are float32, as in the official `GenericAdaptor`. An "attn" feature head attends over the tokens
    it is given, so it must be given one image's tokens per batch row (packed input is split per image).
    """

    def __init__(self, embed_dim: int, spec: dict, attn_implementation: str = "sdpa"):
        super().__init__()
        self.head_idx = spec["head_idx"]
        self.summary = build_mlp(embed_dim, spec["summary"]) if spec["summary"] is not None else None
        feature = spec["feature"]
        self.upsample_factor = feature["upsample_factor"] if feature is not None else 1
        self.feature = (
            build_mlp(embed_dim, feature, self.upsample_factor**2, attn_implementation)
            if feature is not None
            else None
        )

    def _run(self, mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
        weight = next(mlp.parameters())
        return mlp(x.to(weight.dtype)).float()

    def forward_summary(self, cls_tokens: torch.Tensor) -> torch.Tensor | None:
        """(B, num_cls, D) final CLS tokens -> (B, C_teacher) float32, or None without a summary head."""
        if self.summary is None:
            return None
        return self._run(self.summary, cls_tokens[:, self.head_idx])

    def forward_features(self, features: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor | None:
        """(B, h*w, D) -> (B, h*u * w*u, C_teacher) float32, row-major on the u-times denser grid."""
        if self.feature is None:
            return None
        out = self._run(self.feature, features)
        u = self.upsample_factor
        if u > 1:
            (h, w), b = grid_hw, out.shape[0]
            out = out.reshape(b, h, w, u, u, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, h * u * w * u, -1)
        return out


def _whiten(x: torch.Tensor, mean: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
    return (x - mean) @ tx.T


class FeatureNormalizer(nn.Module):
    """PHI-S-style whitening of the spatial features, `(x - mean) @ tx.T` (official `FeatureNormalizer`)."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(embed_dim))
        self.register_buffer("tx", torch.eye(embed_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D)"""
        return _whiten(features, self.mean, self.tx)


class IntermediateFeatureNormalizer(nn.Module):
    """Per-layer `alphas[i] * ((x - means[i]) @ rotation[i].T)` for intermediate patch tokens (official)."""

    def __init__(self, num_intermediates: int, embed_dim: int, rot_per_layer: bool = False):
        super().__init__()
        self.register_buffer("alphas", torch.ones(num_intermediates))
        rotation = torch.eye(embed_dim)
        if rot_per_layer:
            rotation = rotation.expand(num_intermediates, -1, -1).clone()
        self.register_buffer("rotation", rotation)
        self.register_buffer("means", torch.zeros(num_intermediates, embed_dim))

    def forward(self, patches: torch.Tensor, index: int, rot_index: int | None = None) -> torch.Tensor:
        """Rotated, centred patch tokens of layer `index` (rotation of `rot_index`, default `index`), (..., D)."""
        rot_index = index if rot_index is None else rot_index
        rotation = self.rotation[rot_index] if self.rotation.ndim == 3 else self.rotation
        return _whiten(patches, self.means[index], rotation)
