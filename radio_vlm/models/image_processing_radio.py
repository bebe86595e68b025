"""`RadioImageProcessor`: aspect-preserving resize for RADIO, with packing of differently sized images.

RADIO accepts any resolution that is a multiple of its `min_resolution_step` (the patch size, times the
ViTDet window when windowing is on), up to `max_resolution`. This processor brings images there:

- `resize_mode="long_edge"` (default; the AM-RADIO paper's LLaVA setting): the long edge becomes
  `long_edge` px, aspect kept (bicubic, antialiased), and the short side is padded bottom/right up to the
  next multiple of the step with the input conditioner's mean colour, which the model normalises to 0.
  If `long_edge` itself is not a multiple of the step, the long side is padded the same way (no pixel
  is cropped and the aspect stays exact): long_edge=440 with step 16 gives a 448 px long side.
- `resize_mode="nearest_supported"`: each side is resized to the nearest multiple of the step, RADIO's
  own `get_nearest_supported_resolution` rule (Python `round`, half to even; at least one step), e.g.
  437x641 -> 432x640. Nothing is padded (with a `token_merge`, only up to whole merged tokens); the aspect
  changes slightly.
- `resize_mode="square"`: every image becomes `long_edge` x `long_edge` (aspect not kept).

Pixels stay in [0, 1]: the model normalises with its own conditioner. Example: a 640x480 (w x h) photo at
long_edge=432, patch 16 -> resized to 432x324, padded to 432x336, patch grid 21x27 = 567 tokens.

Token budget (for RADIO in a VLM; `num_image_tokens` counts what the LLM sees):
- `token_merge="unshuffle:s"` / `"pool:s"`: the tower merges s x s patches into one token
  (`token_merge.py`), so every side is padded to a multiple of p * s as well (one merged token = p * s px):
  the 640x480 photo at long_edge=768 with "unshuffle:2" is 768x576 px, 48x36 patches, 24x18 = 432 tokens.
- `max_image_tokens=N`: per image, the largest long edge (`long_edge`, else a multiple of the step below
  it) whose token count is at most N, aspect kept ("long_edge" and "square" modes).
"""

from __future__ import annotations

import copy
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN
from transformers.processing_utils import ImagesKwargs

from .image_io import ImageSource, load_image_tensor
from .token_merge import merged_token_count, parse_token_merge

# The input conditioner's mean (OpenAI CLIP), used as the pad colour when no model config is given
# (reference radio_official.md 1.4).
RESIZE_MODES = ("long_edge", "nearest_supported", "square")
_UNSET = object()


class RadioImageProcessorKwargs(ImagesKwargs, total=False):
    """Call-time overrides accepted by `RadioImageProcessor` (and by `from_pretrained(..., key=value)`)."""

    resize_mode: str
    long_edge: int
    patch_size: int
    min_resolution_step: int
    max_resolution: int
    pad_value: Sequence[float]
    pack: bool | None
    token_merge: str
    max_image_tokens: int | None


def patchify(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(3, H, W) -> (H/p * W/p, 3*p*p): row-major patches, each flattened channel-major (c, y, x).

    This is the layout of transformers' `RadioModel` packed input (`_image_to_patches`).
    """
    channels, height, width = image.shape
    rows, cols = height // patch_size, width // patch_size
    patches = image.reshape(channels, rows, patch_size, cols, patch_size).permute(1, 3, 0, 2, 4)
    return patches.reshape(rows * cols, channels * patch_size * patch_size)


class RadioImageProcessor(BaseImageProcessor):
    r"""Resize (and pad) images for RADIO and batch them densely or packed.

    Args:
        resize_mode: "long_edge" | "nearest_supported" | "square" (see the module docstring).
        long_edge: target long edge in px for "long_edge" and "square" (default 432, the LLaVA recipe;
            `from_model_config` uses the model's preferred resolution).
        patch_size: the model's patch size p.
        min_resolution_step: both sides of every output are multiples of this (p, or p times the ViTDet window).
        max_resolution: the largest side the model accepts.
        pad_value: RGB fill colour in [0, 1] for padding (the conditioner's mean).
        pack: how a list of images is batched. None (default): dense when all outputs share one size,
            packed otherwise; True: always packed; False: always dense, smaller images padded bottom/right
            to the batch's largest height and width (their padding then counts as tokens).
        token_merge: "none" (default) | "unshuffle:s" | "pool:s", the merge the vision tower applies (a
            `RadioLlavaVisionConfig.token_merge`): sides are padded to multiples of p * s, and token counts
            are of merged tokens.
        max_image_tokens: at most this many tokens per image (None: no cap): each image gets the largest
            long edge <= `long_edge` that fits (see the module docstring).

    Returns (`__call__`) a `BatchFeature` with
        pixel_values: dense (B, 3, H, W) in [0, 1], or packed (total_patches, 3*p*p) where each image
            contributes its h*w patches in row-major order, each patch flattened channel-major (c, y, x),
            as transformers' `RadioModel` expects with `image_grid_hw`;
        image_grid_hw: (B, 2) int64 patch grid (h, w) of each image as the model sees it;
        image_sizes: (B, 2) int64 resized size (height, width) in px before padding.
    """

    model_input_names = ["pixel_values", "image_grid_hw", "image_sizes"]
    valid_kwargs = RadioImageProcessorKwargs

    def __init__(
        self,
        resize_mode: str = "long_edge",
        long_edge: int = 432,
        patch_size: int = 16,
        min_resolution_step: int | None = None,
        max_resolution: int = 2048,
        pad_value: Sequence[float] = tuple(OPENAI_CLIP_MEAN),
        pack: bool | None = None,
        token_merge: str = "none",
        max_image_tokens: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.resize_mode = resize_mode
        self.long_edge = long_edge
        self.patch_size = patch_size
        self.min_resolution_step = patch_size if min_resolution_step is None else min_resolution_step
        self.max_resolution = max_resolution
        self.pad_value = tuple(float(v) for v in pad_value)
        self.pack = pack
        self.token_merge = token_merge
        self.max_image_tokens = max_image_tokens
        self._check_settings(resize_mode, long_edge)

    @classmethod
    def from_model_config(cls, config, **overrides) -> RadioImageProcessor:
        """Build the processor a `RadioWithAdaptorsConfig` calls for: its patch size, resolution step,
        max resolution, conditioner mean as pad colour, and the long edge of its preferred resolution."""
        patch_size = int(config.patch_size)
        settings = {
            "patch_size": patch_size,
            # official min_resolution_step = patch_size * (ViTDet window or 1) (radio_official.md 1.5);
            # a backbone with its own step (E-RADIO: 32) uses that instead of the patch size
            "min_resolution_step": int(getattr(config.backbone_config, "min_resolution_step", patch_size))
            * int(config.vitdet_window_size or 1),
            "max_resolution": int(config.max_resolution),
            "pad_value": tuple(
                float(v) for v in getattr(config.backbone_config, "norm_mean", OPENAI_CLIP_MEAN)
            ),
        }
        # no preferred resolution: the LLaVA recipe's 432 px, or less when the model's maximum is smaller
        preferred = config.preferred_resolution
        settings["long_edge"] = int(max(preferred)) if preferred else min(432, settings["max_resolution"])
        settings.update(overrides)
        return cls(**settings)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, export_code: bool = False, **kwargs):
        """`BaseImageProcessor.save_pretrained`; with `export_code=True` also write this file and image_io.py and
        an `auto_map` in preprocessor_config.json, so `AutoImageProcessor.from_pretrained(dir,
        trust_remote_code=True)` works without `radio_vlm` (as `RadioWithAdaptors.save_pretrained` does)."""
        if not export_code:
            return super().save_pretrained(save_directory, *args, **kwargs)
        exported = copy.copy(self)  # the auto_map is for the saved file; this object stays as it was
        exported.auto_map = {"AutoImageProcessor": f"{Path(__file__).stem}.{type(self).__name__}"}
        result = exported.save_pretrained(save_directory, *args, **kwargs)
        for source in [__file__, *get_relative_import_files(__file__)]:
            shutil.copyfile(source, Path(save_directory) / Path(source).name)
        return result

    # ----------------------------------------------------------------- sizes

    @property
    def size_step(self) -> int:
        """Every padded side is a multiple of this: `min_resolution_step`, and p * s with a token merge."""
        return math.lcm(self.min_resolution_step, self.patch_size * parse_token_merge(self.token_merge)[1])

    def get_output_size(
        self, height: int, width: int, resize_mode: str | None = None, long_edge: int | None = None
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        """Sizes for one `height` x `width` px image: ((resized_h, resized_w), (padded_h, padded_w)).

        Raises ValueError if the result would exceed `max_resolution`.
        """
        resize_mode = self.resize_mode if resize_mode is None else resize_mode
        long_edge = self.long_edge if long_edge is None else long_edge
        self._check_settings(resize_mode, long_edge)
        step = self.min_resolution_step
        if resize_mode == "nearest_supported":
            # RADIO's get_nearest_supported_resolution: Python round (half to even), at least one step.
            resized = tuple(max(step, round(side / step) * step) for side in (height, width))
            if max(resized) > self.max_resolution:
                raise ValueError(
                    f"a {width}x{height} px (w x h) image snaps to {resized[1]}x{resized[0]} px, beyond the "
                    f"model's max_resolution {self.max_resolution} px: pass resize_mode='long_edge' "
                    f"(long_edge<={self.max_resolution})"
                )
            return resized, self._padded(resized)
        if self.max_image_tokens is None:
            return self._long_edge_size(height, width, resize_mode, long_edge)
        # the largest long edge within the cap: `long_edge` itself, else the multiples of the step below it
        for edge in [long_edge, *range((long_edge - 1) // step * step, 0, -step)]:
            sizes = self._long_edge_size(height, width, resize_mode, edge)
            if self.num_padded_image_tokens(*sizes[1]) <= self.max_image_tokens:
                break
        return sizes  # _check_settings ensures the smallest edge (one step) fits

    def _long_edge_size(self, height: int, width: int, resize_mode: str, long_edge: int):
        """((resized_h, resized_w), (padded_h, padded_w)) for "long_edge" / "square" at `long_edge` px."""
        if resize_mode == "square":
            resized = (long_edge, long_edge)
        elif height >= width:
            resized = (long_edge, max(1, math.floor(width * long_edge / height + 0.5)))
        else:
            resized = (max(1, math.floor(height * long_edge / width + 0.5)), long_edge)
        return resized, self._padded(resized)

    def _padded(self, size: tuple[int, int]) -> tuple[int, int]:
        return tuple(math.ceil(side / self.size_step) * self.size_step for side in size)

    def num_image_tokens(self, height: int, width: int, **size_kwargs) -> int:
        """Tokens the LLM sees for a `height` x `width` px image (patch tokens without CLS/register tokens,
        merged by `token_merge`, within `max_image_tokens`); `size_kwargs` as `get_output_size`'s."""
        return self.num_padded_image_tokens(*self.get_output_size(height, width, **size_kwargs)[1])

    def num_padded_image_tokens(self, height: int, width: int) -> int:
        """Tokens of an image already resized and padded to `height` x `width` px (a `preprocess` output)."""
        return merged_token_count(height // self.patch_size, width // self.patch_size, self.token_merge)

    def _check_settings(self, resize_mode: str, long_edge: int) -> None:
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode={resize_mode!r} is not one of {RESIZE_MODES}")
        if self.patch_size <= 0 or self.min_resolution_step % self.patch_size:
            raise ValueError(
                f"min_resolution_step={self.min_resolution_step} must be a positive multiple of "
                f"patch_size={self.patch_size}"
            )
        parse_token_merge(self.token_merge, max_grid=self.max_resolution // self.patch_size)
        cap = self.max_image_tokens
        if cap is not None:
            if resize_mode == "nearest_supported":
                raise ValueError(
                    f"max_image_tokens={cap} needs resize_mode 'long_edge' or 'square' (nearest_supported "
                    "keeps each image's own size): pass resize_mode='long_edge'"
                )
            side = self.size_step
            least = self.num_padded_image_tokens(side, side)
            if isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < least:
                raise ValueError(
                    f"max_image_tokens={cap!r} must be an integer >= {least}: the smallest image this model "
                    f"takes ({side}x{side} px with token_merge={self.token_merge!r}) costs {least}"
                )
        if resize_mode == "nearest_supported":
            return
        if not isinstance(long_edge, (int, np.integer)) or long_edge <= 0:
            raise ValueError(f"long_edge must be a positive number of pixels, got {long_edge!r}")
        padded = math.ceil(long_edge / self.size_step) * self.size_step
        if padded > self.max_resolution:
            raise ValueError(
                f"long_edge={long_edge} (padded to {padded}) exceeds the model's max_resolution "
                f"{self.max_resolution} px: pass long_edge<={self.max_resolution}"
            )

    # ----------------------------------------------------------------- processing

    def preprocess(
        self,
        images: ImageSource | Sequence[ImageSource],
        resize_mode: str | None = None,
        long_edge: int | None = None,
        pack: bool | None | object = _UNSET,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Resize, pad and batch `images` (see the class docstring for the returned fields and shapes).

        `images` is one image or a list of images of any kind `radio_vlm.models.image_io.load_image` reads, or a
        4-D batch (B, C, H, W) tensor / (B, H, W, C) array. Errors name the image by its index (and path).
        `resize_mode`, `long_edge` and `pack` override the processor's settings for this call.
        `return_tensors`: "pt" (default, also for None) or "np".
        """
        if kwargs:
            raise ValueError(
                f"RadioImageProcessor got unknown arguments {sorted(kwargs)}; it takes resize_mode, "
                "long_edge, pack and return_tensors"
            )
        pack = self.pack if pack is _UNSET else pack
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors={return_tensors!r}: use 'pt' or 'np'")
        sources = _as_list(images)
        if not sources:
            raise ValueError("no images given: pass an image or a non-empty list of images")

        resized, padded_sizes, sizes = [], [], []
        for index, source in enumerate(sources):
            name = f"image {index}" + (
                f" ({os.fspath(source)})" if isinstance(source, str | os.PathLike) else ""
            )
            image = load_image_tensor(source, name)
            try:
                size, padded_size = self.get_output_size(*image.shape[-2:], resize_mode, long_edge)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from err
            resized.append(_resize(image, size))
            sizes.append(size)
            padded_sizes.append(padded_size)

        if pack is None:
            pack = len(set(padded_sizes)) > 1
        if pack:
            patches = [
                patchify(self._pad(image, padded), self.patch_size)
                for image, padded in zip(resized, padded_sizes)
            ]
            pixel_values = torch.cat(patches)
            grids = [(h // self.patch_size, w // self.patch_size) for h, w in padded_sizes]
        else:
            batch_hw = (max(h for h, _ in padded_sizes), max(w for _, w in padded_sizes))
            pixel_values = torch.stack([self._pad(image, batch_hw) for image in resized])
            grids = [(batch_hw[0] // self.patch_size, batch_hw[1] // self.patch_size)] * len(resized)

        data = {
            "pixel_values": pixel_values,
            "image_grid_hw": torch.tensor(grids, dtype=torch.long),
            "image_sizes": torch.tensor(sizes, dtype=torch.long),
        }
        if return_tensors == "np":
            data = {key: value.numpy() for key, value in data.items()}
        return BatchFeature(data=data)

    def _pad(self, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(3, h, w) -> (3, H, W) padded bottom/right with `pad_value`."""
        if tuple(image.shape[-2:]) == tuple(size):
            return image
        out = torch.tensor(self.pad_value, dtype=image.dtype).view(3, 1, 1).repeat(1, *size)
        out[:, : image.shape[1], : image.shape[2]] = image
        return out


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, h, w) -> (3, H, W), bicubic with antialias (as PIL's BICUBIC), clamped to [0, 1]."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(image[None], size=size, mode="bicubic", antialias=True, align_corners=False)
    return out[0].clamp_(0.0, 1.0)


def _as_list(images) -> list:
    """One image, a list of images, or a 4-D batch -> list of single images."""
    if isinstance(images, torch.Tensor | np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, list | tuple):
        return list(images)
    if isinstance(images, PIL.Image.Image | torch.Tensor | np.ndarray | str | os.PathLike):
        return [images]
    raise ValueError(
        f"cannot read images from {type(images).__name__}: pass an image (path, PIL, numpy HWC, torch CHW) or a "
        "list of them"
    )
