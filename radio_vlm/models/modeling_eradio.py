"""E-RADIO: the efficient hybrid CNN-transformer student of AM-RADIO (paper section 5.1).

A stem of two stride-2 3x3 convolutions (stride 4), two stages of YOLOv8 C2f convolution blocks, two stages
of windowed attention with a SwinV2 continuous position bias, where local windows alternate with "global"
windows computed on a 2x downsampled map, and a neck that adds the upsampled last stage to the third, so
the features have stride 16. The summary is the mean of the output tokens (there is no CLS token).

Module names follow the official `radio/eradio_model.py` (reference/radio_official.md section 5), so an
official state dict loads after stripping `base_model.` and dropping the derived position-bias buffers
(see `convert_eradio.py`). This file imports only torch, transformers and its own configuration, so it can
be exported next to the weights for `trust_remote_code`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput
from transformers.models.radio.modeling_radio import RadioInputConditioner

from .configuration_eradio import ERadioConfig


@dataclass
class ERadioModelOutput(ModelOutput):
    r"""
    summary (`torch.Tensor` of shape `(batch_size, hidden_size)`): mean of the output tokens.
    features (`torch.Tensor` of shape `(batch_size, (height / 16) * (width / 16), hidden_size)`): the neck's
        stride-16 features, flattened row-major.
    """

    summary: torch.Tensor | None = None
    features: torch.Tensor | None = None


class ConvBN(nn.Module):
    """Bias-free convolution + BatchNorm (+ activation), 'same' padding; `fuse()` folds the BatchNorm."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act=None, eps=1e-5
    ):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=eps)
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse(self) -> None:
        self.conv.bias = nn.Parameter(_fold_batch_norm(self.conv, self.bn))
        self.bn = nn.Identity()


def _fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Scale `conv.weight` in place by the eval-mode BatchNorm and return the folded bias (C_out,)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(scale[:, None, None, None])
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return (bias - bn.running_mean) * scale + bn.bias


class Stem(nn.Module):
    """(B, 3, H, W) -> (B, dim, H/4, W/4): two stride-2 3x3 Conv+BN+ReLU (official `PatchEmbed`)."""

    def __init__(self, config: ERadioConfig):
        super().__init__()
        eps = config.batch_norm_eps
        self.conv_down = nn.Sequential(
            ConvBN(3, config.in_dim, 3, 2, eps=eps),
            nn.ReLU(),
            ConvBN(config.in_dim, config.dim, 3, 2, eps=eps),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_down(x)


class Bottleneck(nn.Module):
    """YOLOv8 bottleneck: x + Conv3x3(Conv3x3(x)), each Conv+BN+SiLU."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.cv1 = ConvBN(channels, channels, 3, act=nn.SiLU(), eps=eps)
        self.cv2 = ConvBN(channels, channels, 3, act=nn.SiLU(), eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8 C2f: a 1x1 conv split in two halves, n bottlenecks chained on the second, all concatenated."""

    def __init__(self, channels: int, depth: int, eps: float):
        super().__init__()
        hidden = channels // 2  # YOLOv8 expansion e=0.5
        self.cv1 = ConvBN(channels, 2 * hidden, 1, act=nn.SiLU(), eps=eps)
        self.cv2 = ConvBN((2 + depth) * hidden, channels, 1, act=nn.SiLU(), eps=eps)
        self.m = nn.ModuleList(Bottleneck(hidden, eps) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.cv1(x).chunk(2, dim=1))
        for block in self.m:
            parts.append(block(parts[-1]))
        return self.cv2(torch.cat(parts, dim=1))


class Downsample(nn.Module):
    """(B, C, H, W) -> (B, 2C, H/2, W/2): stride-2 3x3 Conv+BN, no activation."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.reduction = ConvBN(channels, 2 * channels, 3, 2, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(x)


@functools.lru_cache(maxsize=32)
def _relative_position_tables(
    window: int, trained_window: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """SwinV2 log-spaced relative coordinates ((2w-1)^2, 2) and the (w^2 * w^2,) index into them.

    Coordinates are normalised by the trained window, as the official model keeps doing after its window
    changes; then x8 and sign(x) * log2(1 + |x|) / log2(8) (SwinV2, Liu et al. 2022, eq. 4).
    """
    rel = torch.arange(-(window - 1), window, dtype=torch.float32)
    coords = torch.stack(torch.meshgrid(rel, rel, indexing="ij"), dim=-1) / (trained_window - 1) * 8
    coords = torch.sign(coords) * torch.log2(coords.abs() + 1.0) / 3.0
    pos = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    delta = pos[:, :, None] - pos[:, None, :]  # (2, w*w, w*w)
    index = (delta[0] + window - 1) * (2 * window - 1) + (delta[1] + window - 1)
    return coords.reshape(-1, 2).to(device), index.flatten().to(device)


class ContinuousPositionBias(nn.Module):
    """Attention bias (1, heads, w*w, w*w) = 16 * sigmoid(cpb_mlp(log-spaced relative coordinates)).

    After `switch_to_deploy()` the bias of the current window is computed once and reused in eval mode.
    """

    def __init__(self, num_heads: int, hidden: int, trained_window: int):
        super().__init__()
        self.num_heads = num_heads
        self.trained_window = trained_window
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, num_heads, bias=False)
        )
        self.deployed = False
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def forward(self, window: int) -> torch.Tensor:
        device, dtype = self.cpb_mlp[0].weight.device, self.cpb_mlp[0].weight.dtype
        key = (window, device, dtype)
        use_cache = self.deployed and not self.training
        if use_cache and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        coords, index = _relative_position_tables(window, self.trained_window, device)
        table = self.cpb_mlp(coords.to(dtype))  # ((2w-1)^2, heads)
        n = window * window
        bias = 16 * torch.sigmoid(table[index].view(n, n, self.num_heads).permute(2, 0, 1)).unsqueeze(0)
        if use_cache:
            self._cache = (key, bias.detach())
        return bias


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows: (B * num_windows, w*w, C) -> same shape."""

    def __init__(self, dim: int, num_heads: int, cpb_mlp_hidden: int, trained_window: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.pos_emb_funct = ContinuousPositionBias(num_heads, cpb_mlp_hidden, trained_window)

    def forward(self, x: torch.Tensor, window: int) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = self.pos_emb_funct(window).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale head_dim^-0.5
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Bias-free Linear -> exact GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, C, H, W) with H, W multiples of `window` -> (B * H/w * W/w, w*w, C), row-major in each window."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // window, window, w // window, window)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, batch: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B * num_windows, w*w, C) -> (B, C, H, W)."""
    c = windows.shape[-1]
    x = windows.view(batch, height // window, width // window, window, window, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(batch, c, height, width)


class AttentionBlock(nn.Module):
    """One windowed transformer block on a (B, C, H, W) map (official `GRAAttentionBlock`).

    `subsample_ratio` 2: "global" windows on the map downsampled by a stride-2 2x2 conv, brought back by a
    transposed conv. 1: local windows after a residual 3x3 Conv+BN. Either way out = (x' + x) / 2, because
    the down/up-sampling breaks the residual path (official comment).
    """

    def __init__(self, dim: int, num_heads: int, subsample_ratio: int, config: ERadioConfig):
        super().__init__()
        self.subsample_ratio = subsample_ratio
        if subsample_ratio > 1:
            self.downsample_op = nn.Conv2d(dim, dim, subsample_ratio, subsample_ratio)
            self.upsample_op = nn.ConvTranspose2d(dim, dim, subsample_ratio, subsample_ratio)
        else:
            groups = max(1, int(config.conv_groups_ratio * dim))
            self.pre_conv = ConvBN(dim, dim, 3, groups=groups, eps=config.batch_norm_eps)
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = WindowAttention(dim, num_heads, config.cpb_mlp_hidden, config.window_size)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))

    def forward(self, x: torch.Tensor, window: int) -> torch.Tensor:
        skip = x
        x = self.downsample_op(x) if self.subsample_ratio > 1 else self.pre_conv(x) + skip
        b, _, h, w = x.shape
        tokens = window_partition(x, window)
        tokens = tokens + self.attn(self.norm1(tokens), window)
        tokens = tokens + self.mlp(self.norm2(tokens))
        x = window_reverse(tokens, window, b, h, w)
        if self.subsample_ratio > 1:
            x = self.upsample_op(x)
        return 0.5 * x + 0.5 * skip


class MultiResolutionAttention(nn.Module):
    """A chain of attention blocks, one per sub-sample ratio (e.g. global then local)."""

    def __init__(self, dim: int, num_heads: int, sr_ratios: list[int], config: ERadioConfig):
        super().__init__()
        self.attention_blocks = nn.ModuleList(AttentionBlock(dim, num_heads, r, config) for r in sr_ratios)

    def forward(self, x: torch.Tensor, window: int) -> torch.Tensor:
        for block in self.attention_blocks:
            x = block(x, window)
        return x


class ConvStage(nn.Module):
    """C2f stage: (B, C, H, W) -> (downsampled (B, 2C, H/2, W/2), pre-downsample (B, C, H, W))."""

    def __init__(self, dim: int, depth: int, eps: float):
        super().__init__()
        self.blocks = C2f(dim, depth, eps)
        self.downsample = Downsample(dim, eps)

    def forward(self, x: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`window` is unused: every stage takes the same arguments."""
        x = self.blocks(x)
        return self.downsample(x), x


class AttentionStage(nn.Module):
    """Transformer stage: (B, C, H, W) -> (downsampled or same, pre-downsample (B, C, H, W)).

    A map that is not a multiple of window * max(sub-sample ratio) is resized with nearest interpolation
    to the next multiple, processed and resized back, as the official model does.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, sr_ratios: list[int], config, downsample: bool):
        super().__init__()
        self.max_ratio = max(sr_ratios)
        self.blocks = nn.ModuleList(
            MultiResolutionAttention(dim, num_heads, sr_ratios, config) for _ in range(depth)
        )
        self.downsample = Downsample(dim, config.batch_norm_eps) if downsample else None

    def forward(self, x: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        step = window * self.max_ratio
        resized = h % step != 0 or w % step != 0
        if resized:
            x = F.interpolate(
                x, size=(math.ceil(h / step) * step, math.ceil(w / step) * step), mode="nearest"
            )
        for block in self.blocks:
            x = block(x, window)
        if resized:
            x = F.interpolate(x, size=(h, w), mode="nearest")
        return (self.downsample(x) if self.downsample is not None else x), x


class NeckProjection(nn.Module):
    """Nearest upsample -> depthwise 3x3 conv -> BatchNorm -> 1x1 conv to the neck width."""

    def __init__(self, c_in: int, c_out: int, upsample: int, eps: float):
        super().__init__()
        self.upsample = upsample
        self.conv1 = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in)
        self.norm = nn.BatchNorm2d(c_in, eps=eps)
        self.conv2 = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")
        return self.conv2(self.norm(self.conv1(x)))

    @torch.no_grad()
    def fuse(self) -> None:
        self.conv1.bias = nn.Parameter(_fold_batch_norm(self.conv1, self.norm))
        self.norm = nn.Identity()


class HiResNeck(nn.Module):
    """Sums the projected pre-downsample outputs of stages >= neck_start_stage at the first one's size."""

    def __init__(self, config: ERadioConfig):
        super().__init__()
        self.start = config.neck_start_stage
        self.neck_features_proj = nn.ModuleList()
        upsample = 1
        for i in range(self.start, 4):
            width = config.dim * 2**i
            if upsample > 1 or width != config.full_features_head_dim:
                proj = NeckProjection(width, config.full_features_head_dim, upsample, config.batch_norm_eps)
            else:
                proj = nn.Identity()
            self.neck_features_proj.append(proj)
            if i > 0:  # the official ratio only grows from stage 1 on (so a stage-0 start is off by one)
                upsample *= 2

    def forward(self, stage_outputs: list[torch.Tensor]) -> torch.Tensor:
        """Stage outputs (B, C_i, H_i, W_i) -> (B, full_features_head_dim, H_start, W_start)."""
        full = None
        for proj, x in zip(self.neck_features_proj, stage_outputs[self.start :]):
            x = proj(x)
            if full is None:
                full = x
                continue
            if x.shape[-2:] != full.shape[-2:]:  # crop or zero-pad bottom/right, as the official neck
                x = F.pad(x, (0, full.shape[-1] - x.shape[-1], 0, full.shape[-2] - x.shape[-2]))
            full = full + x
        return full


class ERadioPreTrainedModel(PreTrainedModel):
    config: ERadioConfig
    config_class = ERadioConfig
    base_model_prefix = "eradio"
    main_input_name = "pixel_values"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm2d):
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, RadioInputConditioner):
            init.copy_(module.norm_mean, torch.tensor(self.config.norm_mean).view(-1, 1, 1))
            init.copy_(module.norm_std, torch.tensor(self.config.norm_std).view(-1, 1, 1))


class ERadioModel(ERadioPreTrainedModel):
    """E-RADIO backbone: pixels (B, 3, H, W) in [0, 1], H and W multiples of 32 -> `ERadioModelOutput`."""

    def __init__(self, config: ERadioConfig):
        super().__init__(config)
        d, eps = config.dim, config.batch_norm_eps
        self.input_conditioner = RadioInputConditioner(config)
        self.patch_embed = Stem(config)
        self.levels = nn.ModuleList(
            [
                ConvStage(d, config.depths[0], eps),
                ConvStage(2 * d, config.depths[1], eps),
                AttentionStage(
                    4 * d, config.depths[2], config.num_heads[2], config.sr_ratios[0], config, True
                ),
                AttentionStage(
                    8 * d, config.depths[3], config.num_heads[3], config.sr_ratios[1], config, False
                ),
            ]
        )
        self.high_res_neck = HiResNeck(config)
        self.window_size = config.window_size  # current window; set_optimal_window_size changes it
        self.post_init()

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def min_resolution_step(self) -> int:
        return self.config.min_resolution_step

    @property
    def embed_dim(self) -> int:
        return self.config.hidden_size

    def get_nearest_supported_resolution(self, height: int, width: int) -> tuple[int, int]:
        """Each side rounded to the nearest multiple of 32 (at least 32), RADIO's own rule."""
        step = self.min_resolution_step
        return tuple(max(int(round(s / step) * step), step) for s in (height, width))

    def change_window_size(self, window_size: int) -> None:
        """Use `window_size` x `window_size` attention windows in both transformer stages."""
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        self.window_size = int(window_size)

    def set_optimal_window_size(self, image_size: int | tuple[int, int], max_window_size: int = 16) -> int:
        """Pick the window as the official model does: the largest divisor of min(H, W) // 32 that is at
        most `max_window_size` (224 px -> 7, 256 -> 8, 512 -> 16), so no feature map needs resizing for
        square inputs. Returns the window."""
        side = min(image_size) if isinstance(image_size, (tuple, list)) else image_size
        cells = side // 32
        if cells < 1:
            raise ValueError(f"set_optimal_window_size: image size {image_size} is below the 32 px minimum")
        window = max(d for d in range(1, min(cells, max_window_size) + 1) if cells % d == 0)
        self.change_window_size(window)
        return window

    def make_preprocessor_external(self) -> nn.Module:
        """Detach the input conditioner (the caller normalises with CLIP mean/std itself)."""
        conditioner = self.input_conditioner
        self.input_conditioner = nn.Identity()
        return conditioner

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Inference-only speed-up: fold every BatchNorm into its convolution and cache the position bias.

        Gives the same outputs in eval mode; the folded model has a different state dict, so save and
        train the model before calling this, not after.
        """
        for module in self.modules():
            if isinstance(module, (ConvBN, NeckProjection)):
                module.fuse()
            elif isinstance(module, ContinuousPositionBias):
                module.deployed = True

    def forward(self, pixel_values: torch.Tensor) -> ERadioModelOutput:
        r"""
        pixel_values (`torch.Tensor` of shape `(batch_size, 3, height, width)`): RGB in [0, 1]; height and
            width must be multiples of 32.
        """
        if pixel_values.dim() != 4:
            raise ValueError(
                f"E-RADIO takes (B, 3, H, W) pixel_values, got shape {tuple(pixel_values.shape)}"
            )
        h, w = pixel_values.shape[-2:]
        step = self.min_resolution_step
        if h % step or w % step:
            nh, nw = self.get_nearest_supported_resolution(h, w)
            raise ValueError(
                f"E-RADIO requires input dimensions to be divisible by {step} but got H x W: {h} x {w} "
                f"(pixel_values shape {tuple(pixel_values.shape)}); resize to the nearest supported "
                f"resolution {nh} x {nw} (model.get_nearest_supported_resolution)"
            )
        x = self.patch_embed(self.input_conditioner(pixel_values))
        stage_outputs = []
        for level in self.levels:
            x, pre_downsample = level(x, self.window_size)
            stage_outputs.append(pre_downsample)
        features = self.high_res_neck(stage_outputs).flatten(2).transpose(1, 2)
        return ERadioModelOutput(summary=features.mean(dim=1), features=features)


__all__ = ["ERadioModel", "ERadioModelOutput", "ERadioPreTrainedModel"]
