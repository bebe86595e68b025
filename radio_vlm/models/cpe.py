"""CPE patch generator: transformers' `RadioPatchEmbeddings` plus the official training-time CPE.

Exported next to the weights for `trust_remote_code`: imports only torch, transformers and sibling files.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import RadioConfig
from transformers.models.radio.modeling_radio import RadioPatchEmbeddings

from .configuration_radio_with_adaptors import RadioWithAdaptorsConfig


class RadioCPEPatchEmbeddings(RadioPatchEmbeddings):
    """transformers' CPE patch generator plus the official training-time CPE and `align_corners` choice.

    Eval: the table is resized bilinearly to a square max(h, w) and cropped top-left (as the parent does),
    with `align_corners` configurable. Train (when `training_cpe`): each image reads a random crop of the
    table (scale U(min_scale, 1), aspect exp(U(-log a, log a))) through `grid_sample(align_corners=True)`,
    and its whole position embedding is dropped with probability `pos_dropout` (official `ViTPatchGenerator`).
    With `num_video_frames` T (official `cpe_video_mode`), a batch of B*T frames reads B crops, each shared
    by the T consecutive frames of one clip. With `patch_embed_bias` the patch projection has a bias
    (the DINOv2-architecture students).
    """

    def __init__(self, config: RadioConfig, cpe: RadioWithAdaptorsConfig):
        super().__init__(config)
        if cpe.patch_embed_bias:
            self.patch_projection = nn.Linear(config.patch_dim, config.hidden_size, bias=True)
        self.align_corners = cpe.pos_embed_align_corners
        self.training_cpe = cpe.training_cpe
        self.min_scale = cpe.cpe_min_scale
        self.max_aspect = cpe.cpe_max_aspect
        self.pos_dropout = cpe.cpe_pos_dropout
        self.num_video_frames: int | None = None

    def _table(self) -> torch.Tensor:
        return (
            self.position_embedding.reshape(1, self.max_rows, self.max_cols, -1).permute(0, 3, 1, 2).float()
        )

    def _interpolate_position_embedding(
        self, input_dims: tuple[int, int], dtype: torch.dtype
    ) -> torch.Tensor:
        """Eval-time position embedding for an (h, w) grid, (1, h*w, D)."""
        h, w = input_dims
        if (h, w) == (self.max_rows, self.max_cols):
            return self.position_embedding.to(dtype)
        side = max(h, w)
        pos = F.interpolate(
            self._table(), size=(side, side), mode="bilinear", align_corners=self.align_corners
        )
        return pos[..., :h, :w].to(dtype).flatten(2).transpose(1, 2)

    def _random_crop_position_embedding(self, input_dims: tuple[int, int], batch: int) -> torch.Tensor:
        """A random crop of the table per image (per clip in video mode), resampled to the (h, w) grid:
        (batch, h*w, D) float32."""
        frames = self.num_video_frames or 1
        if batch % frames:
            raise ValueError(
                f"video mode with {frames} frames per clip needs dense (clips * {frames}, 3, H, W) batches, got "
                f"{batch} frames (packed input is not split into clips)"
            )
        return self._random_crops(input_dims, batch // frames).repeat_interleave(frames, dim=0)

    def _random_crops(self, input_dims: tuple[int, int], batch: int) -> torch.Tensor:
        (h, w), device = input_dims, self.position_embedding.device
        scale = torch.empty(batch, 1, device=device).uniform_(self.min_scale, 1.0)
        log_aspect = math.log(self.max_aspect)
        aspect = torch.empty(batch, 1, device=device).uniform_(-log_aspect, log_aspect).exp()
        scale_x, scale_y = (scale * aspect).clamp(0, 1), (scale / aspect).clamp(0, 1)
        xs = torch.linspace(0, 1, w, device=device) * scale_x + torch.rand(batch, 1, device=device) * (
            1 - scale_x
        )
        ys = torch.linspace(0, 1, h, device=device) * scale_y + torch.rand(batch, 1, device=device) * (
            1 - scale_y
        )
        grid = (
            torch.stack([xs[:, None, :].expand(-1, h, -1), ys[:, :, None].expand(-1, -1, w)], dim=-1) * 2 - 1
        )
        table = self._table().expand(batch, -1, -1, -1)
        pos = F.grid_sample(table, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return pos.flatten(2).transpose(1, 2)

    def position_embedding_for(
        self, input_dims: tuple[int, int], batch: int, dtype: torch.dtype
    ) -> torch.Tensor:
        """Position embedding added to the patches of `batch` images of one grid: (1 or batch, h*w, D)."""
        input_dims = tuple(input_dims)
        if not self.training:
            return self._interpolate_position_embedding(input_dims, dtype)
        if self.training_cpe and input_dims != (self.max_rows, self.max_cols):
            pos = self._random_crop_position_embedding(input_dims, batch).to(dtype)
        else:
            pos = self._interpolate_position_embedding(input_dims, dtype).expand(batch, -1, -1)
        if self.pos_dropout > 0:
            keep = torch.rand(batch, 1, 1, device=pos.device) >= self.pos_dropout
            pos = pos * keep.to(dtype)
        return pos

    def _embed_dense_patches(self, pixel_values: torch.Tensor, projection: nn.Linear) -> torch.Tensor:
        patches = projection(self._image_to_patches(pixel_values))
        grid = (pixel_values.shape[-2] // self.patch_size, pixel_values.shape[-1] // self.patch_size)
        patches = patches + self.position_embedding_for(grid, patches.shape[0], patches.dtype)
        prefix = self.cls_register_token.unsqueeze(0).expand(patches.shape[0], -1, -1)
        return torch.cat([prefix, patches], dim=1)

    def _embed_packed_patches(
        self, pixel_values: torch.Tensor, image_grid_hw: torch.LongTensor
    ) -> torch.Tensor:
        patches = self.patch_projection(pixel_values)
        embeddings = []
        for grid, image_patches in zip(
            image_grid_hw.tolist(), patches.split(image_grid_hw.prod(-1).tolist())
        ):
            pos = self.position_embedding_for(grid, 1, patches.dtype)[0]
            embeddings.extend([self.cls_register_token, image_patches + pos])
        return torch.cat(embeddings).unsqueeze(0)
