"""Per-sample cost and worker memory of a folder source at 10^3 and 10^6 images (baseline: 10^3, same run).

A folder source reads its images through the run's file index (`distill.index`: built once, read with two
`os.pread`s per sample) in the order of the O(1) epoch shuffle (`distill.batches.sample_item`, a Feistel
permutation). The index here lists 10^3 or 10^6 entries over scikit-image's photos written as real PNG files
resized to one size (the entries repeat them: what differs between the two is the index, the shuffle and the
page cache's view of the list, not the images). A sample is the training path itself: shuffle -> index lookup -> decode ->
scale+crop -> resize for the student and three tiny teachers (`DistillDataset`).

    python bench/data_scale.py           # about 1-2 min on 2 cores
    python bench/data_scale.py --json    # the last line is one JSON object

Rounds alternate between the two sizes and the ratio is the median over rounds, on this process's CPU time
(`per_sample_1e6_over_1e3`, goal <= 1.5) and on the wall clock (`_wall`; noisy on a shared machine: the load
average is printed). Also measured: the shuffle + index lookup alone, the same lookup with the former
per-sample `permutation(N)` (`legacy_shuffle_us_*`), the index build, and the peak RSS (VmHWM) and private
memory (USS) of each of `--workers` DataLoader workers reading 10^6 entries, against the memory a plain
Python list of the 10^6 paths costs in every process (what each rank and worker held before).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from distill.batches import sample_item  # noqa: E402
from distill.data import SKIMAGE_PHOTOS, DistillDataset, DistillView, ImageFolderSource, SkimageSource  # noqa: E402
from distill.index import FileIndex, build_index  # noqa: E402
from distill.teachers import get_teacher_spec  # noqa: E402

SIZES = (1_000, 1_000_000)
PHOTO_SIZE = (512, 384)


def write_photos(folder: Path) -> list[str]:
    """scikit-image's photos as 512x384 PNG files under `folder` (one size, so that which photos a sample
    set happens to draw does not weigh on the comparison); their relative paths."""
    source, names = SkimageSource(), []
    for i, name in enumerate(SKIMAGE_PHOTOS):
        path = folder / "photos" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        source.load(i).resize(PHOTO_SIZE).save(path)
        names.append(f"photos/{name}.png")
    return names


def build(folder: Path, photos: list[str], n: int) -> tuple[FileIndex, float]:
    """An index of `n` entries cycling over `photos` (from a user's list file), and its build time in s."""
    listing = folder / f"files_{n}.txt"
    with listing.open("w") as f:
        for i in range(n):
            f.write(photos[i % len(photos)] + "\n")
    start = time.perf_counter()
    index = build_index(folder / f"index_{n}", folder, listing)
    return index, time.perf_counter() - start


def timed(fn, count: int) -> tuple[float, float]:
    """(wall s, CPU s) per call of fn(k) over k in [0, count)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for k in range(count):
        fn(k)
    return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count


def _memory_collate(samples):
    """Runs in the DataLoader worker: this worker's peak RSS (VmHWM) and private memory (USS), in MB."""
    status = Path("/proc/self/status").read_text()
    peak_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    return os.getpid(), peak_kb / 1024, psutil.Process().memory_full_info().uss / 2**20, len(samples)


def worker_memory(
    dataset: DistillDataset, n: int, workers: int, batches: int, batch_size: int
) -> dict[int, tuple]:
    """{worker pid: (peak RSS MB, USS MB)} after reading `batches` shuffled batches of an n-entry source."""
    items = [[sample_item(b * batch_size + i, n, 0) for i in range(batch_size)] for b in range(batches)]
    loader = DataLoader(dataset, batch_sampler=items, num_workers=workers, collate_fn=_memory_collate)
    seen: dict[int, tuple] = {}
    for pid, peak, uss, _ in loader:
        old = seen.get(pid, (0.0, 0.0))
        seen[pid] = (max(old[0], peak), max(old[1], uss))
    return seen


def list_memory_mb(n: int) -> float:
    """MB a Python list of n path strings like the index's takes (the former per-process file list)."""
    tracemalloc.start()
    paths = [f"/data/datacomp/shard{i // 10000:05d}/{i:09d}.jpg" for i in range(n)]
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del paths
    return size / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=80, help="samples per size per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds over the two sizes")
    parser.add_argument("--lookups", type=int, default=20000, help="shuffle + index lookups per size")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the memory figure")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    teachers = [get_teacher_spec(n) for n in ("tiny_clip", "tiny_dinov2", "tiny_sam")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        photos = write_photos(folder)
        indexes, build_s = {}, {}
        for n in SIZES:
            indexes[n], build_s[n] = build(folder, photos, n)
        datasets = {n: DistillDataset(ImageFolderSource(folder, indexes[n]), DistillView(224, teachers), seed=0)
                    for n in SIZES}  # fmt: skip

        def sample(n: int, start: int):
            return lambda k: datasets[n][sample_item(start + k, n, 0)]

        for n in SIZES:  # warm-up: page cache, PIL, first-touch of both index files
            timed(sample(n, 10**5), 10)
        per_round = {n: [] for n in SIZES}
        for r in range(args.rounds):
            for n in SIZES if r % 2 == 0 else SIZES[::-1]:
                per_round[n].append(timed(sample(n, r * args.samples), args.samples))
        lookup = {
            n: timed(lambda k, n=n: indexes[n][sample_item(7 * k, n, 0)[1]], args.lookups) for n in SIZES
        }

        def legacy(n: int):  # the former sample_item: a full permutation(N) per sample
            def fn(k: int) -> str:
                order = np.random.default_rng([0, (7 * k) // n, 7]).permutation(n)
                return indexes[n][int(order[(7 * k) % n])]

            return fn

        legacy_lookup = {n: timed(legacy(n), max(20, args.lookups // 1000)) for n in SIZES}
        memory = {n: worker_memory(datasets[n], n, args.workers, batches=8, batch_size=16) for n in SIZES}
    list_mb = list_memory_mb(SIZES[1])

    ratio_cpu = statistics.median(b[1] / a[1] for a, b in zip(per_round[SIZES[0]], per_round[SIZES[1]]))
    ratio_wall = statistics.median(b[0] / a[0] for a, b in zip(per_round[SIZES[0]], per_round[SIZES[1]]))
    ms = {n: (statistics.median(x[0] for x in per_round[n]) * 1e3, statistics.median(x[1] for x in per_round[n]) * 1e3)
          for n in SIZES}  # fmt: skip
    peak = {n: max(p for p, _ in memory[n].values()) for n in SIZES}
    uss = {n: max(u for _, u in memory[n].values()) for n in SIZES}
    load = os.getloadavg()[0]

    print(f"{'entries':>10} {'sample ms':>10} {'(CPU ms)':>9} {'lookup us':>10} {'legacy us':>10} {'build s':>8} "
          f"{'worker peak RSS MB':>19} {'worker USS MB':>14}")  # fmt: skip
    for n in SIZES:
        print(f"{n:>10,} {ms[n][0]:>10.2f} {ms[n][1]:>9.2f} {lookup[n][1] * 1e6:>10.1f} "
              f"{legacy_lookup[n][1] * 1e6:>10.1f} {build_s[n]:>8.2f} {peak[n]:>19.1f} {uss[n]:>14.1f}")  # fmt: skip
    print(f"per-sample time 10^6 / 10^3: {ratio_cpu:.3f} on CPU time, {ratio_wall:.3f} on the wall clock "
          f"(goal <= 1.5); {args.workers} workers; load average {load:.1f} on {os.cpu_count()} cores")  # fmt: skip
    print(f"a Python list of the 10^6 paths: {list_mb:.1f} MB in every rank and worker (the index: 0)")
    if args.json:
        result = {
            "per_sample_1e6_over_1e3": round(ratio_cpu, 4),
            "per_sample_1e6_over_1e3_wall": round(ratio_wall, 4),
            "lookup_1e6_over_1e3": round(lookup[SIZES[1]][1] / lookup[SIZES[0]][1], 4),
            "legacy_shuffle_1e6_over_1e3": round(legacy_lookup[SIZES[1]][1] / legacy_lookup[SIZES[0]][1], 2),
            "per_sample_ms_1e3": round(ms[SIZES[0]][1], 3), "per_sample_ms_1e6": round(ms[SIZES[1]][1], 3),
            "lookup_us_1e6": round(lookup[SIZES[1]][1] * 1e6, 2),
            "legacy_shuffle_us_1e6": round(legacy_lookup[SIZES[1]][1] * 1e6, 1),
            "index_build_s_1e6": round(build_s[SIZES[1]], 2),
            "worker_peak_rss_mb_1e6": round(peak[SIZES[1]], 1), "worker_peak_rss_mb_1e3": round(peak[SIZES[0]], 1),
            "worker_uss_mb_1e6": round(uss[SIZES[1]], 1), "worker_uss_mb_1e3": round(uss[SIZES[0]], 1),
            "path_list_mb_1e6": round(list_mb, 1), "workers": args.workers, "load_average": round(load, 1),
        }  # fmt: skip
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
