"""Summary vectors of many images, batched for throughput, sharded over ranks and cached.

A DataLoader decodes and resizes images in worker processes; each batch runs as one forward: a dense
(B, 3, H, W) batch when every image has one size (centre-crop mode), a packed batch of differently sized
images otherwise (aspect-preserving mode on a ViT), or one dense batch per size on a convolutional
backbone (E-RADIO). The cache is a safetensors file keyed by everything that changes the vectors.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..models.image_processing_radio import patchify
from .common import autocast
from .datasets import TransformedImages, collate_list
from .distributed import EvalContext


def summary_of(model, pixel_values: list[torch.Tensor], adaptor: str | None) -> torch.Tensor:
    """(B, C) float32 summary of a list of (3, H, W) images; the backbone's or `adaptor`'s summary head."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    sizes = [tuple(p.shape[-2:]) for p in pixel_values]
    if len(set(sizes)) == 1:
        groups = {sizes[0]: list(range(len(sizes)))}
    elif getattr(model, "is_vit", True):
        groups = {}
    else:
        groups = defaultdict(list)
        for i, size in enumerate(sizes):
            groups[size].append(i)
    if groups:  # dense batch(es) of equal-sized images
        out = [None] * len(sizes)
        for members in groups.values():
            batch = torch.stack([pixel_values[i] for i in members]).to(device, dtype, non_blocking=True)
            summary = _pick(model(batch), adaptor)
            for row, i in enumerate(members):
                out[i] = summary[row]
        return torch.stack(out).float()
    patch = model.patch_size
    grids = torch.tensor([(h // patch, w // patch) for h, w in sizes], dtype=torch.long)
    packed = torch.cat([patchify(p, patch) for p in pixel_values]).to(device, dtype, non_blocking=True)
    return _pick(model(packed, image_grid_hw=grids.to(device)), adaptor).float()


def _pick(output, adaptor: str | None) -> torch.Tensor:
    if adaptor is None:
        return output.summary
    summary = output.adaptors[adaptor].summary
    if summary is None:
        raise ValueError(f"adaptor {adaptor!r} has no summary head (a feature-only teacher such as SAM)")
    return summary


@torch.inference_mode()
def embed_images(
    model,
    paths: list[str],
    transform,
    ctx: EvalContext,
    adaptor: str | None = None,
    batch_size: int = 64,
    workers: int = 4,
    amp: bool = False,
    desc: str = "embed",
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """Summaries of every image in `paths`, this rank embedding its shard, gathered on every rank.

    Returns (summaries (N, C) float32 on the CPU, valid (N,) bool: False for unreadable images, whose rows
    are zero, and every rank's skipped [(path, reason)]).
    """
    mine = ctx.shard(len(paths))
    loader = torch.utils.data.DataLoader(
        TransformedImages(paths, transform, mine),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_list,
        pin_memory=ctx.device.type == "cuda",
    )
    rows, done, skipped = [], [], []
    start, count = time.perf_counter(), 0
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not ctx.is_main)
    for items in loader:
        good = [item for item in items if item["error"] is None]
        skipped += [(paths[item["index"]], item["error"]) for item in items if item["error"] is not None]
        if good:
            with autocast(ctx.device, amp):
                rows.append(summary_of(model, [item["image"] for item in good], adaptor).cpu())
            done += [item["index"] for item in good]
        count += len(items)
        bar.update(len(items) * ctx.world)
    bar.close()
    elapsed = time.perf_counter() - start
    if ctx.is_main:
        print(
            f"{desc}: {count * ctx.world} images in {elapsed:.1f}s ({count * ctx.world / max(elapsed, 1e-9):.1f} img/s)"
        )
    width = rows[0].shape[1] if rows else _summary_width(model, adaptor)
    local = torch.cat(rows) if rows else torch.zeros(0, width)
    summaries = ctx.gather_rows(local.to(ctx.device), done, len(paths))
    valid = ctx.gather_rows(torch.ones(len(done), dtype=torch.bool, device=ctx.device), done, len(paths))
    skipped = sorted({tuple(s) for part in ctx.gather_objects(skipped) for s in part})
    return summaries, valid, skipped


def _summary_width(model, adaptor: str | None) -> int:
    if adaptor is None:
        return model.summary_dim
    return model.config.adaptors[adaptor]["summary"]["output_dim"]


def cache_key(**parts) -> str:
    """A short hash of everything that determines a set of embeddings."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_fingerprint(model_dir: str | Path) -> list:
    """(name, size, mtime) of the model folder's files: a changed checkpoint gets a new cache key."""
    folder = Path(model_dir)
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()]


def load_cached(path: Path, count: int) -> tuple[torch.Tensor, torch.Tensor, list] | None:
    """(summaries, valid, skipped) from a cache file written by `save_cached`, or None if absent/stale."""
    if not path.is_file():
        return None
    tensors = load_file(str(path))
    if tensors["summaries"].shape[0] != count:
        return None
    with safe_open(str(path), "pt") as f:
        skipped = json.loads((f.metadata() or {}).get("skipped", "[]"))
    return tensors["summaries"], tensors["valid"].bool(), [tuple(s) for s in skipped]


def save_cached(path: Path, summaries: torch.Tensor, valid: torch.Tensor, skipped: list) -> None:
    """Write the cache atomically (a killed run leaves no half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file(
        {"summaries": summaries.contiguous(), "valid": valid.to(torch.uint8)},
        str(partial),
        metadata={"skipped": json.dumps([list(s) for s in skipped])},
    )
    partial.replace(path)
