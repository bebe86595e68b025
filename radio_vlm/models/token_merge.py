"""Token merges between RADIO's patch grid and the LLM: fewer image tokens at the same resolution.

    "none"         every patch token goes to the LLM (LLaVA-1.5, the AM-RADIO paper)
    "unshuffle:s"  pixel-unshuffle of the patch grid: each s x s block of tokens becomes one token of width
                   s^2 x D, channels ordered as `torch.nn.functional.pixel_unshuffle` orders them (channel,
                   then row, then column inside the block); the 2x2 "pixel shuffle" of the Nemotron-VL and
                   InternVL models on RADIO
    "pool:s"       s x s average pooling (width D)

A grid whose sides are not multiples of s is padded bottom/right with zero tokens first, so an h x w grid
gives ceil(h/s) x ceil(w/s) tokens (a pooled token at the edge averages its real tokens with the zeros).
The same arithmetic decides `RadioImageProcessor.num_image_tokens`, the LLaVA processor's `<image>`
expansion and `RadioLlavaVisionModel`'s output, which is why it lives in one file that all three import.

Exported next to the weights for `trust_remote_code`: imports only torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TOKEN_MERGE_KINDS = ("none", "unshuffle", "pool")


def parse_token_merge(merge: str, max_grid: int | None = None) -> tuple[str, int]:
    """ "none" -> ("none", 1); "unshuffle:2" -> ("unshuffle", 2); "pool:3" -> ("pool", 3).

    `max_grid` (the model's largest patch grid side, max_resolution // patch_size) bounds s: a block larger
    than every image is not a merge this model can apply. Raises ValueError naming the valid range.
    """
    kind, sep, arg = merge.partition(":") if isinstance(merge, str) else ("", "", "")
    if kind == "none" and not sep:
        return "none", 1
    upper = f"..{max_grid}" if max_grid else " or more"
    if kind in TOKEN_MERGE_KINDS[1:] and arg.isdigit() and int(arg) >= 2:
        factor = int(arg)
        if max_grid is None or factor <= max_grid:
            return kind, factor
        raise ValueError(
            f"token_merge={merge!r}: this model's largest patch grid is {max_grid} x {max_grid} tokens, so s "
            f"must be in 2{upper}"
        )
    raise ValueError(
        f"token_merge={merge!r} is not one of 'none', 'unshuffle:s', 'pool:s' with an integer s in 2{upper}"
    )


def merged_grid(grid_h: int, grid_w: int, factor: int) -> tuple[int, int]:
    """Token grid after an s x s merge of a `grid_h` x `grid_w` patch grid (zero-padded up to multiples of s)."""
    return math.ceil(grid_h / factor), math.ceil(grid_w / factor)


def merged_token_count(grid_h: int, grid_w: int, merge: str) -> int:
    """Tokens the LLM sees for a `grid_h` x `grid_w` patch grid under `merge`."""
    _, factor = parse_token_merge(merge)
    rows, cols = merged_grid(grid_h, grid_w, factor)
    return rows * cols


def merged_width(width: int, merge: str) -> int:
    """Channels of a merged token made from tokens of `width` channels."""
    kind, factor = parse_token_merge(merge)
    return width * factor**2 if kind == "unshuffle" else width


def merge_tokens(features: torch.Tensor, grid_hw: tuple[int, int], merge: str) -> torch.Tensor:
    """(N, h*w, D) row-major patch tokens of N images sharing one `grid_hw` -> (N, h'*w', D') merged tokens,
    row-major over the merged grid (h', w') = `merged_grid`; D' = `merged_width(D, merge)`."""
    kind, factor = parse_token_merge(merge)
    if kind == "none":
        return features
    (grid_h, grid_w), (num, _, width) = grid_hw, features.shape
    rows, cols = merged_grid(grid_h, grid_w, factor)
    grid = features.transpose(1, 2).reshape(num, width, grid_h, grid_w)
    grid = F.pad(grid, (0, cols * factor - grid_w, 0, rows * factor - grid_h))  # zero tokens bottom/right
    merged = F.pixel_unshuffle(grid, factor) if kind == "unshuffle" else F.avg_pool2d(grid, factor)
    return merged.flatten(2).transpose(1, 2)


def merge_packed_tokens(features: torch.Tensor, grids: list[tuple[int, int]], merge: str) -> torch.Tensor:
    """Packed (sum_i h_i*w_i, D) tokens of images with patch grids `grids` -> packed (sum_i h_i'*w_i', D')."""
    if parse_token_merge(merge)[0] == "none":
        return features
    chunks = features.split([h * w for h, w in grids])
    return torch.cat([merge_tokens(chunk[None], grid, merge)[0] for chunk, grid in zip(chunks, grids)])
