"""`radio-vlm eval knn` speed: embedding throughput against a plain per-image loop, and the k-NN search against a
full sort.

1. Embedding: the same RADIO (ViT-Ti/16 shape by default: 192 wide, 12 deep, random weights) and the same
   official resize rule embed an ImageFolder of mixed-size JPEGs, once with `radio_vlm.evaluation.embed`
   (a DataLoader, batches: dense in centre-crop mode, packed in aspect-preserving mode) and once image by
   image (load, resize, `model(x[None])`), the loop a user writes first.
2. Search: a database of 10^5 x 1024 L2-normalised vectors, 20 neighbours for each query: `knn_search`
   (chunked matmul + top-k) against the full similarity matrix sorted row by row.

    python bench/eval_knn.py --json     # about 2-4 min on 2 CPU cores

JSON keys (the last line): embed_dense_vs_loop, embed_packed_vs_loop (images/s of the batched pipeline over
the loop's), knn_search_vs_full_sort (full-sort seconds over knn_search seconds), each also as
`<key>_cpu_time` from this process's CPU time (steadier on a shared machine), plus the raw numbers, the
settings and the load average while measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from radio_vlm import RadioWithAdaptors, RadioWithAdaptorsConfig  # noqa: E402
from radio_vlm.evaluation.datasets import ClassifyTransform  # noqa: E402
from radio_vlm.evaluation.distributed import EvalContext  # noqa: E402
from radio_vlm.evaluation.embed import embed_images  # noqa: E402
from radio_vlm.evaluation.knn import knn_search  # noqa: E402
from radio_vlm.models.image_io import load_image  # noqa: E402

# (height, width) of the synthetic photos, cycled: landscape, portrait, square, panorama
PHOTO_SIZES = [(375, 500), (500, 375), (400, 400), (300, 600), (480, 640), (427, 640)]


def build_model(width: int, depth: int, heads: int) -> RadioWithAdaptors:
    backbone = {"hidden_size": width, "num_hidden_layers": depth, "num_attention_heads": heads,
                "intermediate_size": 4 * width, "patch_size": 16, "max_img_size": 2048, "num_cls_tokens": 1,
                "num_registers": 0, "summary_idxs": [0]}  # fmt: skip
    torch.manual_seed(0)
    return RadioWithAdaptors(
        RadioWithAdaptorsConfig(backbone_config=backbone, preferred_resolution=[224, 224])
    ).eval()


def write_photos(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        h, w = PHOTO_SIZES[i % len(PHOTO_SIZES)]
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def per_image_loop(model, paths: list[str], transform) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(transform(load_image(p))[None]).summary for p in paths])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=96, help="photos to embed (default 96)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="DataLoader workers of the batched pipeline (default 0: both decode in this process, so CPU times compare)",
    )
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--database", type=int, default=100_000, help="k-NN database rows (default 10^5)")
    parser.add_argument("--dim", type=int, default=1024, help="k-NN vector width (default 1024)")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    model, ctx = build_model(args.width, args.depth, args.heads), EvalContext()
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_photos(Path(tmp), args.images)
        for mode, resolution in (("dense", (224, 224)), ("packed", (224,))):
            transform = ClassifyTransform(resolution, 16, (0.5, 0.5, 0.5))
            per_image_loop(model, paths[:4], transform)  # warm-up
            batched = timed(lambda t=transform, m=mode: embed_images(model, paths, t, ctx, batch_size=args.batch_size,
                                                             workers=args.workers, desc=f"embed {m}"))  # fmt: skip
            loop = timed(lambda t=transform: per_image_loop(model, paths, t))
            label = "centre crop 224x224" if mode == "dense" else "short side 224, aspect kept"
            rows.append(
                (f"embed, {label}", "eval knn pipeline", args.images / batched[0], args.images / batched[1])
            )
            rows.append((f"embed, {label}", "per-image loop", args.images / loop[0], args.images / loop[1]))
            results[f"embed_{mode}_vs_loop"] = loop[0] / batched[0]
            results[f"embed_{mode}_vs_loop_cpu_time"] = loop[1] / batched[1]
            results[f"embed_{mode}_images_per_s"] = args.images / batched[0]
            results[f"loop_{mode}_images_per_s"] = args.images / loop[0]

    generator = torch.Generator().manual_seed(0)
    database = F.normalize(torch.randn(args.database, args.dim, generator=generator), dim=1)
    queries = F.normalize(torch.randn(args.queries, args.dim, generator=generator), dim=1)

    def full_sort():
        return (queries @ database.T).sort(dim=1, descending=True)

    chunked = timed(lambda: knn_search(queries, database, args.k))
    naive = timed(full_sort)
    assert torch.equal(knn_search(queries, database, args.k)[1], full_sort().indices[:, : args.k])
    rows.append(
        (
            f"k-NN {args.queries} x {args.database} x {args.dim}",
            "knn_search (chunked top-k)",
            chunked[0],
            chunked[1],
        )
    )
    rows.append(
        (f"k-NN {args.queries} x {args.database} x {args.dim}", "full matrix + sort", naive[0], naive[1])
    )
    results["knn_search_vs_full_sort"] = naive[0] / chunked[0]
    results["knn_search_vs_full_sort_cpu_time"] = naive[1] / chunked[1]
    results |= {"knn_search_s": chunked[0], "full_sort_s": naive[0]}

    print(f"{'case':<44} {'method':<28} {'wall':>10} {'CPU':>10}")
    for case, method, wall, cpu in rows:
        unit = "s" if case.startswith("k-NN") else "img/s"
        print(f"{case:<44} {method:<28} {wall:>8.2f} {unit:<5} {cpu:>6.2f} {unit}")
    load = (load_before + os.getloadavg()[0]) / 2
    print(f"ratios: embed dense {results['embed_dense_vs_loop']:.2f}x, packed {results['embed_packed_vs_loop']:.2f}x, "
          f"search {results['knn_search_vs_full_sort']:.2f}x (load average {load:.1f} on {os.cpu_count()} CPUs)")  # fmt: skip
    results |= {"baseline": "per-image loop (embedding); full similarity matrix + sort (search)",
                "images": args.images, "batch_size": args.batch_size, "model": f"ViT {args.width}x{args.depth}",
                "threads": torch.get_num_threads(), "load_average": load, "cpus": os.cpu_count()}  # fmt: skip
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
