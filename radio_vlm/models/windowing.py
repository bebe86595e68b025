"""ViTDet windowed attention for a RADIO ViT: the official block schedule and token permutations.

The official code (`radio/vitdet.py`) permutes the patch tokens into window-major order once before the
blocks, runs "windowed" blocks on each window separately (the CLS/register prefix tokens bypass them and
are re-attached unchanged), runs "global" blocks on the whole sequence, and scatters the tokens back to
row-major order after the last block. Attention has no positional bias, so a global block gives the same
result in either token order.

Exported next to the weights for `trust_remote_code`: torch only.
"""

from __future__ import annotations

import torch


def vitdet_schedule(depth: int, num_global: int | None = None, num_windowed: int | None = None) -> list[bool]:
    """Which blocks are windowed (True) under the official schedule; the last block is always global.

    With `num_windowed` the period is `num_windowed + 1`; otherwise `max(depth // (num_global or 4), 1)`.
    Block i < depth-1 switches to windows when `i % period == 0` and back to global when
    `i % period == period - 1`; blocks in between keep the current layout.
    Examples (depth 32): num_windowed=5 -> WWWWWG x5 + WG; num_global=4 -> WWWWWWWG x4.
    """
    if num_windowed is not None:
        if num_windowed < 1:
            raise ValueError(f"vitdet num_windowed must be >= 1, got {num_windowed}")
        period = num_windowed + 1
    else:
        if num_global is not None and not 1 <= num_global <= depth:
            raise ValueError(f"vitdet num_global must be in [1, {depth}] (the depth), got {num_global}")
        period = max(depth // (num_global or 4), 1)
    if period == 1:
        # the official code then windows and un-windows the same block and crashes (resolution_rules.json)
        raise ValueError(
            f"a ViTDet schedule with period 1 has no windowed block (depth {depth}, num_global={num_global}): "
            f"pass num_global <= {depth // 2} or num_windowed >= 1"
        )
    windowed, state = [], False
    for i in range(depth):
        if i == depth - 1:
            state = False
        elif i % period == 0:
            state = True
        elif i % period == period - 1:
            state = False
        windowed.append(state)
    return windowed


def window_major_order(
    grid_h: int, grid_w: int, window: int, device: torch.device | None = None
) -> torch.Tensor:
    """Row-major patch index at each window-major position, `(wy py wx px) -> (wy wx py px)`; shape (h*w,)."""
    index = torch.arange(grid_h * grid_w, device=device)
    index = index.view(grid_h // window, window, grid_w // window, window)
    return index.permute(0, 2, 1, 3).reshape(-1)


def packed_window_order(
    grids_hw: list[tuple[int, int]], num_prefix: int, window: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Permutation of a packed sequence `[prefix_0, patches_0, prefix_1, patches_1, ...]` to window-major.

    Returns `(order, patch_positions)`: `x[order]` puts each image's patches in window-major order
    (prefix tokens stay in place), and `patch_positions` are the positions of all patch tokens in that
    permuted sequence, so consecutive groups of `window**2` of them form the windows.
    """
    order, patch_positions, start = [], [], 0
    for h, w in grids_hw:
        order.append(torch.arange(start, start + num_prefix, device=device))
        order.append(start + num_prefix + window_major_order(h, w, window, device))
        patch_positions.append(torch.arange(start + num_prefix, start + num_prefix + h * w, device=device))
        start += num_prefix + h * w
    return torch.cat(order), torch.cat(patch_positions)
