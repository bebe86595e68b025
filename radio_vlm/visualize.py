"""PCA pictures of dense features, as in the AM-RADIO paper's Figure 1, and the `radio-vlm visualize` command.

The first three principal components of an image's patch tokens become red, green and blue. Each
component is scaled by a robust min/max (its 1st and 99th percentiles, clipped) so a few outlier tokens
don't wash out the picture, then the patch grid is upsampled nearest-neighbour to the image's pixels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from .features import add_model_arguments, encode_images, load_model_and_processor
from .models.image_io import load_image

# Robust min/max: the percentiles that map to 0 and 1 in each colour channel.
ROBUST_QUANTILES = (0.01, 0.99)


def pca_rgb(features: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Patch features (h*w, D) in row-major grid order -> (h, w, 3) float32 colours in [0, 1].

    Components' signs are fixed (largest loading positive) so the same features give the same colours.
    """
    height, width = (int(v) for v in grid_hw)
    if features.ndim != 2 or features.shape[0] != height * width:
        raise ValueError(
            f"features must be (h*w, D) = ({height * width}, D) for grid {height}x{width}, got {tuple(features.shape)}"
        )
    x = features.detach().float().cpu()
    x = x - x.mean(dim=0, keepdim=True)
    num_components = min(3, *x.shape)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    components = vh[:num_components]  # (k, D)
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    projected = x @ (components * signs).T  # (h*w, k)
    if num_components < 3:  # fewer than 3 tokens or channels: leave the missing colours at 0
        projected = torch.cat([projected, projected.new_zeros(projected.shape[0], 3 - num_components)], dim=1)
    low = torch.quantile(projected, ROBUST_QUANTILES[0], dim=0)
    high = torch.quantile(projected, ROBUST_QUANTILES[1], dim=0)
    colours = ((projected - low) / (high - low).clamp_min(1e-6)).clamp(0.0, 1.0)
    return colours.reshape(height, width, 3)


def pca_picture(
    features: torch.Tensor,
    grid_hw: tuple[int, int],
    patch_size: int,
    valid_hw: tuple[int, int] | None = None,
    image: PIL.Image.Image | None = None,
) -> PIL.Image.Image:
    """Render patch features (h*w, D) as a PCA picture.

    Each token covers `patch_size` x `patch_size` px; the picture is cropped to `valid_hw` (the image's
    un-padded size in the processed input, default the whole grid). With `image` the picture is resized
    (nearest) to the image's size and placed to its right.
    """
    colours = pca_rgb(features, grid_hw)
    pixels = colours.repeat_interleave(patch_size, dim=0).repeat_interleave(patch_size, dim=1)
    if valid_hw is not None:
        pixels = pixels[: int(valid_hw[0]), : int(valid_hw[1])]
    picture = PIL.Image.fromarray((pixels.numpy() * 255.0 + 0.5).astype(np.uint8), mode="RGB")
    if image is None:
        return picture
    picture = picture.resize(image.size, PIL.Image.NEAREST)
    side_by_side = PIL.Image.new("RGB", (image.width * 2, image.height))
    side_by_side.paste(image.convert("RGB"), (0, 0))
    side_by_side.paste(picture, (image.width, 0))
    return side_by_side


def montage(pictures: list[PIL.Image.Image], row_height: int = 256) -> PIL.Image.Image:
    """Stack pictures vertically, each scaled to `row_height` px high, on a white background."""
    rows = [
        p.resize((max(1, round(p.width * row_height / p.height)), row_height), PIL.Image.BICUBIC)
        for p in pictures
    ]
    sheet = PIL.Image.new("RGB", (max(r.width for r in rows), row_height * len(rows)), (255, 255, 255))
    for index, row in enumerate(rows):
        sheet.paste(row, (0, index * row_height))
    return sheet


# ----------------------------------------------------------------- `radio-vlm visualize`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image file(s); several give one picture with a row each")
    parser.add_argument("--out", required=True, help="output picture (.png)")
    add_model_arguments(parser)
    parser.add_argument(
        "--pca-only", action="store_true", help="write only the PCA picture, not the image beside it"
    )


def run(args: argparse.Namespace) -> int:
    model, processor = load_model_and_processor(args.model, args.device, args.dtype)
    images = [load_image(path, f"image file {path}") for path in args.images]
    encoded = encode_images(model, processor, images, adaptor=args.adaptor, long_edge=args.long_edge)
    pictures = [
        pca_picture(
            item["features"],
            item["grid_hw"],
            item["token_px"],
            item["image_size"],
            None if args.pca_only else image,
        )
        for item, image in zip(encoded, images)
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    (pictures[0] if len(pictures) == 1 else montage(pictures)).save(out)
    print(f"wrote {out}")
    return 0
