"""k-NN classification on summary vectors (the official RADIO protocol, as DINO's and DINOv2's).

    radio-vlm eval knn --model radio-h/ --train imagenet/train --val imagenet/val [--k 20] [--resolution 378]

The training images' L2-normalised summaries are the database; each validation image votes over its k most
cosine-similar database entries with weights exp(s / 0.07), summed per class (Wu et al. 2018, section 3.4;
RADIO's examples/knn_classification.py). Top-1 is the class with the largest vote (the first on ties), top-5
whether the label is among the five largest. Search is chunked (queries x database blocks, a running top-k),
so a 1.28M x 1536 database never forms a full similarity matrix. Under `torchrun` each rank embeds a shard,
the database is all-gathered and every rank classifies its share of the validation images. Embeddings are
cached in OUT/cache (safetensors): a rerun with another k only searches.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import Run, add_model_flags, percent
from .datasets import ClassifyTransform, ImageFolder, add_resolution_flag, check_same_classes
from .distributed import EvalContext
from .embed import cache_key, embed_images, load_cached, model_fingerprint, save_cached

TEMPERATURE = 0.07  # exp(s / T) vote weights (Wu et al. 2018; DINO; RADIO's knn_classification.py)


def knn_search(
    queries: torch.Tensor, database: torch.Tensor, k: int, query_chunk: int = 1024, db_chunk: int = 131072
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` most similar database rows of every query by dot product (cosine for normalised rows).

    queries (Q, C), database (N, C) on one device. Returns (similarities (Q, k), indices (Q, k) int64), each
    row in decreasing similarity. Memory: one query_chunk x db_chunk block at a time.
    """
    if k > database.shape[0]:
        raise ValueError(
            f"k={k} but the database has {database.shape[0]} images: pass --k {database.shape[0]} or less"
        )
    sims, idxs = [], []
    for q in range(0, queries.shape[0], query_chunk):
        block = queries[q : q + query_chunk]
        best_s = best_i = None
        for d in range(0, database.shape[0], db_chunk):
            rows = database[d : d + db_chunk]
            s, i = (block @ rows.T).topk(min(k, rows.shape[0]), dim=1)
            i = i + d
            if best_s is not None:  # merge with the running top-k of the earlier database blocks
                s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i], 1)
                s, picked = s.topk(min(k, s.shape[1]), dim=1)
                i = i.gather(1, picked)
            best_s, best_i = s, i
        sims.append(best_s)
        idxs.append(best_i)
    return torch.cat(sims), torch.cat(idxs)


def knn_votes(
    similarities: torch.Tensor,
    neighbour_labels: torch.Tensor,
    num_classes: int,
    temperature: float = TEMPERATURE,
) -> torch.Tensor:
    """(Q, num_classes) float64 class votes: sum over the neighbours of each class of exp(similarity / temperature)
    (float64: a low temperature overflows float32, e^(1 / 0.01) > 3.4e38)."""
    weights = torch.exp(similarities.double() / temperature)
    votes = torch.zeros(similarities.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    return votes.scatter_add_(1, neighbour_labels, weights)


def knn_correct(
    votes: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(top1 (Q,) bool, top5 (Q,) bool): argmax vote == target (first class on ties, as the official code);
    target among the five largest votes (all classes when there are fewer)."""
    top1 = votes.argmax(dim=1) == targets
    top5 = (votes.topk(min(5, num_classes), dim=1).indices == targets[:, None]).any(dim=1)
    return top1, top5


def folder_summaries(
    run: Run, folder: ImageFolder, split: str, transform, resolution
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summaries, valid) of every image of `folder`, from the cache when this exact set was embedded before."""
    args = run.args
    files = hashlib.sha256("\n".join(p for p, _ in folder.samples).encode()).hexdigest()
    key = cache_key(model=model_fingerprint(args.model), random_init=args.random_init, seed=args.seed,
                    adaptor=args.adaptor, resolution=resolution, files=files, amp=args.amp)  # fmt: skip
    path = Path(args.cache_dir or run.out / "cache") / f"{split}-{key}.safetensors"
    cached = None if args.no_cache else load_cached(path, len(folder))
    if cached is not None:
        summaries, valid, skipped = cached
        if run.ctx.is_main:
            print(f"{split}: {len(folder)} embeddings from the cache {path}")
    else:
        summaries, valid, skipped = embed_images(
            run.model, [p for p, _ in folder.samples], transform, run.ctx, args.adaptor, args.batch_size,
            args.workers, args.amp, desc=f"embed {split}",
        )  # fmt: skip
        if run.ctx.is_main and not args.no_cache:
            save_cached(path, summaries, valid, skipped)
    run.skipped += skipped
    return summaries, valid


def knn_classify(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    train_labels: torch.Tensor,
    val_labels: torch.Tensor,
    classes: tuple[str, ...],
    ctx: EvalContext,
    k: int = 20,
    temperature: float = TEMPERATURE,
    query_chunk: int = 1024,
    db_chunk: int = 131072,
) -> dict:
    """k-NN metrics from (summaries (N, C), valid (N,)) of both sets, every rank holding all of them: each
    rank classifies its share of the validation images and the counts are summed over ranks."""
    device, num_classes = ctx.device, len(classes)
    (train_summary, train_valid), (val_summary, val_valid) = train, val
    database = F.normalize(train_summary[train_valid], dim=1).to(device)
    database_labels = train_labels[train_valid].to(device)
    val_rows = torch.nonzero(val_valid).flatten()
    mine = val_rows[ctx.shard(len(val_rows))]
    queries = F.normalize(val_summary[mine], dim=1).to(device)
    targets = val_labels[mine].to(device)
    sims, idx = knn_search(queries, database, k, query_chunk, db_chunk)
    top1, top5 = knn_correct(
        knn_votes(sims, database_labels[idx], num_classes, temperature), targets, num_classes
    )
    per_class = torch.zeros(2, num_classes, dtype=torch.float64, device=device)
    per_class[0].scatter_add_(0, targets, top1.double())
    per_class[1].scatter_add_(0, targets, torch.ones_like(targets, dtype=torch.float64))
    totals = ctx.sum([top1.sum().item(), top5.sum().item(), *per_class.flatten().tolist()])
    total = len(val_rows)
    correct_per_class, count_per_class = totals[2 : 2 + num_classes], totals[2 + num_classes :]
    return {
        "top1": 100.0 * totals[0] / total,
        "top5": 100.0 * totals[1] / total,
        "per_class_top1": {
            name: (100.0 * c / n if n else None)
            for name, c, n in zip(classes, correct_per_class, count_per_class)
        },
        "num_train": int(train_valid.sum()),
        "num_val": total,
    }


def knn_metrics(
    model, train: ImageFolder, val: ImageFolder, ctx: EvalContext, adaptor: str | None = None, k: int = 20,
    resolution: tuple[int, ...] | None = None, batch_size: int = 64, workers: int = 0, amp: bool = False,
) -> tuple[dict, list[tuple[str, str]]]:  # fmt: skip
    """The protocol on a model in memory (no cache): (metrics, skipped images). `resolution` as --resolution
    (default: the model's preferred resolution, centre-cropped)."""
    check_same_classes(train, val)
    transform = ClassifyTransform.for_model(model, resolution)
    train_set = embed_images(model, [p for p, _ in train.samples], transform, ctx, adaptor, batch_size, workers, amp,
                             "embed train")  # fmt: skip
    val_set = embed_images(model, [p for p, _ in val.samples], transform, ctx, adaptor, batch_size, workers, amp,
                           "embed val")  # fmt: skip
    metrics = knn_classify(train_set[:2], val_set[:2], train.labels, val.labels, train.classes, ctx, k)
    return metrics, train_set[2] + val_set[2]


def run_knn(args: argparse.Namespace) -> dict:
    """The command: the protocol on a model folder, embeddings cached; returns the metrics.json record."""
    run = Run("knn", args)
    train = ImageFolder.scan(args.train, "--train ImageFolder")
    val = ImageFolder.scan(args.val, "--val ImageFolder")
    check_same_classes(train, val)
    transform = ClassifyTransform.for_model(run.model, args.resolution and tuple(args.resolution))
    resolution = transform.resolution
    metrics = knn_classify(
        folder_summaries(run, train, "train", transform, resolution),
        folder_summaries(run, val, "val", transform, resolution),
        train.labels, val.labels, train.classes, run.ctx, args.k, args.temperature, args.query_chunk, args.db_chunk,
    )  # fmt: skip
    settings = {"train": str(args.train), "val": str(args.val), "k": args.k, "temperature": args.temperature,
                "resolution": list(resolution), "classes": len(train.classes)}  # fmt: skip
    rows = [("top-1", percent(metrics["top1"])), ("top-5", percent(metrics["top5"])), ("k", str(args.k)),
            ("train images", str(metrics["num_train"])), ("val images", str(metrics["num_val"]))]  # fmt: skip
    return run.finish(settings, metrics, rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser, "use this adaptor's summary head (e.g. clip) instead of the backbone summary")
    parser.add_argument(
        "--train", required=True, help="ImageFolder of the database images (one folder per class)"
    )
    parser.add_argument(
        "--val", required=True, help="ImageFolder of the images to classify (same class folders)"
    )
    parser.add_argument("--k", type=int, default=20, help="neighbours that vote (default 20)")
    parser.add_argument(
        "--temperature", type=float, default=TEMPERATURE, help="vote weight exp(s / T) (default 0.07)"
    )
    add_resolution_flag(parser)
    parser.add_argument("--cache-dir", default=None, help="embedding cache folder (default OUT/cache)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write cached embeddings")
    parser.add_argument("--query-chunk", type=int, default=1024, help="queries per similarity block")
    parser.add_argument("--db-chunk", type=int, default=131072, help="database rows per similarity block")


def run(args: argparse.Namespace) -> int:
    run_knn(args)
    return 0
