"""Batches for each rank group, in an order that is a function of the step alone.

Global sample number n (from `RankPlan.sample_indices`) reads image `perm_e(n % N)` of epoch
e = n // N, where perm_e is a seeded pseudo-random permutation of [0, N) evaluated in O(1) time and memory
(`FeistelPermutation`: 10^9 images cost what 10^3 do); the view of that image is a function of
(seed, epoch, index) (`distill.data`). A resumed run therefore rebuilds exactly the batches the interrupted
one would have seen, with no sampler state to save. Held-out images for the final evaluation are never
trained on: a separately seeded synthetic pool, the last `eval_images` images of a folder (its index) or of
scikit-image's photos, or `data.eval_path`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from torch.utils.data import DataLoader, Sampler

from distill.config import ConfigError, DataConfig, GroupConfig
from distill.data import (
    DistillBatch,
    DistillDataset,
    DistillView,
    ImageFolderSource,
    SkimageSource,
    SyntheticSource,
    WebDatasetStream,
    collate_distill,
)
from distill.index import FileIndex, build_index
from distill.partition import RankPlan
from distill.teachers import TeacherSpec

T = TypeVar("T")

# Seed offset of the held-out synthetic pool, so it shares no image with the training pool.
EVAL_SEED_OFFSET = 1_000_003


class _Subset:
    """Images [start, stop) of a source, as a source."""

    def __init__(self, source, start: int, stop: int) -> None:
        self.source, self.start, self.stop = source, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def load(self, index: int):
        return self.source.load(self.start + index)


class _Cached:
    """A generated source kept in memory once decoded: synthetic/scikit-image pools are small, and
    regenerating an image for every view would dominate a tiny run's step time."""

    def __init__(self, source) -> None:
        self.source, self._images = source, {}

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int):
        if index not in self._images:
            self._images[index] = self.source.load(index)
        return self._images[index]


def _held_out_split(source, eval_images: int, what: str):
    if len(source) <= eval_images:
        raise ValueError(
            f"data: {what} has {len(source)} images, too few to hold out data.eval_images={eval_images}; "
            f"lower data.eval_images or set data.eval_path"
        )
    return _Subset(source, 0, len(source) - eval_images), _Subset(
        source, len(source) - eval_images, len(source)
    )


def _single_process(fn: Callable[[], T]) -> T:
    return fn()


def build_sources(
    data: DataConfig,
    seed: int,
    index_dir: str | Path | None = None,
    on_main: Callable[[Callable[[], Any]], Any] = _single_process,
):
    """(training source, held-out source) for the config's `data` section.

    Folder sources need `index_dir` (the run's `data_index/`): their file lists are written there once by
    `on_main` (the run's `Collectives.on_main`: rank 0 alone, errors raised on every rank) and then opened
    by every rank."""
    if data.source == "synthetic":
        train = _Cached(SyntheticSource(num_images=data.num_images, seed=seed))
        held_out = SyntheticSource(num_images=data.eval_images, seed=seed + EVAL_SEED_OFFSET)
    elif data.source == "skimage":
        train, held_out = _held_out_split(
            _Cached(SkimageSource()), data.eval_images, "scikit-image's photo set"
        )
    elif data.source == "webdataset":
        if data.path is None or data.eval_path is None:
            raise ValueError(
                "data.path (tar shards, e.g. /data/shard-{000000..000999}.tar) and data.eval_path (a folder of "
                "held-out images) are both needed when data.source is 'webdataset'"
            )
        train = data.path  # shard pattern; streamed by ShardBatches
    elif data.source == "folder":
        if data.path is None:
            raise ValueError("data.path: the image folder to train on (data.source is 'folder')")
        source = _folder(index_dir, "train", data.path, data.index, on_main)
        if data.eval_path is None:
            train, held_out = _held_out_split(source, data.eval_images, f"image folder {data.path}")
        else:
            train = source
    else:
        raise ValueError(
            f"data.source: unknown {data.source!r}; choose synthetic, skimage, folder or webdataset"
        )
    if data.eval_path is not None:
        held_out = _folder(index_dir, "eval", data.eval_path, None, on_main)
    return train, held_out


def _folder(index_dir, name: str, root: str, list_file: str | None, on_main) -> ImageFolderSource:
    """The folder `root` through its file index `index_dir/name`, written and checked once per run."""
    if index_dir is None:
        raise ValueError("folder sources need the run's index directory: build_sources(..., index_dir=...)")
    folder = Path(index_dir) / name
    on_main(lambda: len(build_index(folder, root, list_file)))
    return ImageFolderSource(root, FileIndex(folder))


_M64 = (1 << 64) - 1


def _mix64(z: int) -> int:
    """splitmix64's finaliser: a bijective 64-bit mix whose every output bit depends on every input bit."""
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


class FeistelPermutation:
    """A keyed pseudo-random permutation of [0, n), evaluated per index in O(1) time and memory.

    A balanced 4-round Feistel network (Luby-Rackoff: a pseudo-random permutation for a pseudo-random round
    function, here splitmix64 of (key, round, half)) on the smallest even number of bits covering n, made a
    permutation of [0, n) by cycle walking: re-encrypt while the result is >= n (the domain is < 4n, so
    under 4 encryptions on average).
    """

    ROUNDS = 4

    def __init__(self, n: int, key: int) -> None:
        if n < 1:
            raise ValueError(f"a permutation needs n >= 1, got {n}")
        self.n, self.key = n, key & _M64
        self.half = max(1, ((n - 1).bit_length() + 1) // 2)
        self.mask = (1 << self.half) - 1

    def _encrypt(self, x: int) -> int:
        left, right = x >> self.half, x & self.mask
        for r in range(self.ROUNDS):
            left, right = right, left ^ (_mix64(self.key ^ _mix64((r << 56) ^ right)) & self.mask)
        return (left << self.half) | right

    def __call__(self, index: int) -> int:
        if not 0 <= index < self.n:
            raise IndexError(f"{index} is outside [0, {self.n})")
        value = self._encrypt(index)
        while value >= self.n:
            value = self._encrypt(value)
        return value


@lru_cache(maxsize=64)
def epoch_permutation(num_images: int, seed: int, epoch: int) -> FeistelPermutation:
    """The image order of `epoch`: keyed by (seed, epoch)."""
    return FeistelPermutation(num_images, random.Random(f"{seed}/{epoch}/images").getrandbits(64))


def sample_item(number: int, num_images: int, seed: int) -> tuple[int, int]:
    """(epoch, image index) read by global sample `number`: a seeded shuffle per epoch, O(1) per sample."""
    epoch = number // num_images
    return epoch, epoch_permutation(num_images, seed, epoch)(number % num_images)


class _StepBatches(Sampler):
    """Items [(epoch, index), ...] of one group's batches on this rank, for micro-steps from `start`."""

    def __init__(self, plan: RankPlan, group: int, start_step: int, max_steps: int, grad_accum: int,
                 num_images: int, seed: int) -> None:  # fmt: skip
        self.plan, self.group, self.grad_accum = plan, group, grad_accum
        self.steps = range(start_step, max_steps)
        self.num_images, self.seed = num_images, seed

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in self.steps:
            for assignment in self.plan.assignments(step):
                if assignment.group != self.group:
                    continue
                for micro in range(self.grad_accum):
                    numbers = self.plan.sample_indices(step * self.grad_accum + micro, assignment)
                    yield [sample_item(n, self.num_images, self.seed) for n in numbers]


class GroupBatches:
    """One iterator of `DistillBatch`es per group this rank may run; `next_batch(group)` takes the next."""

    def __init__(self, source, groups: list[GroupConfig], specs: dict[str, TeacherSpec], plan: RankPlan,
                 data: DataConfig, seed: int, start_step: int, max_steps: int, grad_accum: int) -> None:  # fmt: skip
        self._iterators = {}
        for k, group in enumerate(groups):
            if k not in plan.possible_groups():
                continue
            view = DistillView(
                group.resolution, [specs[t] for t in group.teachers], data.min_scale, data.max_scale
            )
            dataset = DistillDataset(source, view, seed=seed)
            sampler = _StepBatches(plan, k, start_step, max_steps, grad_accum, len(source), seed)
            loader = DataLoader(dataset, batch_sampler=sampler, num_workers=data.num_workers,
                                collate_fn=collate_distill, persistent_workers=False)  # fmt: skip
            self._iterators[k] = iter(loader)

    def next_batch(self, group: int) -> DistillBatch:
        return next(self._iterators[group])

    def state(self) -> dict:
        """Nothing to save: the position is a function of the step."""
        return {}


class ShardBatches:
    """WebDataset tar shards (DataComp style) streamed per group this rank runs (`group_sampling: fixed`).

    Shards are dealt to the ranks of a group (`distill.data.WebDatasetStream`). A group's position on this
    rank (epoch, every worker role's cursor, the role whose batch comes next) follows the batches taken;
    `state()` returns it for the checkpoint and `position=` gives it back on resume, so the stream continues
    exactly where it stopped, mid-epoch or at an epoch boundary, with any number of DataLoader workers (the
    same number as before: a worker's shards depend on it).
    """

    def __init__(self, urls: str, groups: list[GroupConfig], specs: dict[str, TeacherSpec], plan: RankPlan,
                 data: DataConfig, seed: int, position: dict | None = None) -> None:  # fmt: skip
        if plan.sampling != "fixed":
            raise ValueError("data.source 'webdataset' needs distributed.group_sampling: fixed")
        self.num_workers = max(1, data.num_workers)
        self.streams: dict[int, WebDatasetStream] = {}
        self.position: dict[int, dict] = {}
        self._iterators: dict[int, Iterator[DistillBatch]] = {}
        self._loader_workers = data.num_workers
        for assignment in plan.assignments(0):
            group = groups[assignment.group]
            view = DistillView(
                group.resolution, [specs[t] for t in group.teachers], data.min_scale, data.max_scale
            )
            stream = WebDatasetStream(
                urls, view, group.batch_size, seed, rank=assignment.slot, world_size=assignment.num_slots
            )
            self.streams[assignment.group] = stream
            saved = (position or {}).get(str(assignment.group))
            self.position[assignment.group] = self._resumed(saved, assignment.group, assignment.num_slots)
        # Every rank checks every group, so a group with too few shards stops all ranks, not only its own.
        num_shards = len(next(iter(self.streams.values())).urls)
        for k, group in enumerate(groups):
            slots = len(plan.members[k]) * self.num_workers
            if num_shards < slots:
                raise ConfigError(
                    f"groups.{k} ({group.name}): {num_shards} shards cannot feed its {len(plan.members[k])} "
                    f"rank(s) x {self.num_workers} DataLoader worker(s); lower data.num_workers or split the "
                    f"data into more shards"
                )
        for group in self.streams:
            self._restart(group)

    def _resumed(self, saved: dict | None, group: int, num_slots: int) -> dict:
        fresh = {
            "epoch": 0,
            "cursors": {},
            "next_role": 0,
            "num_workers": self.num_workers,
            "ranks": num_slots,
        }
        if saved is None:
            return fresh
        for key, now in (("num_workers", self.num_workers), ("ranks", num_slots)):
            if saved[key] != now:
                raise ConfigError(
                    f"group {group}: the checkpoint's WebDataset position is for {saved[key]} {key} and this run "
                    f"has {now}; resume with the same data.num_workers and rank count (shards are dealt by them)"
                )
        return {**saved, "cursors": {int(role): tuple(c) for role, c in saved["cursors"].items()}}

    def _restart(self, group: int) -> None:
        stream, position = self.streams[group], self.position[group]
        stream.set_epoch(position["epoch"])
        stream.set_position(position["cursors"], position["next_role"])
        loader = DataLoader(stream, batch_size=None, num_workers=self._loader_workers)
        self._iterators[group] = iter(loader)

    def next_batch(self, group: int) -> DistillBatch:
        try:
            batch = next(self._iterators[group])
        except StopIteration:  # end of the epoch's shards: next epoch, reshuffled
            epoch = self.position[group]["epoch"] + 1
            self.position[group].update(epoch=epoch, cursors={}, next_role=0)
            self._restart(group)
            batch = next(self._iterators[group])
        role, done, read = batch.stream_state
        self.position[group]["cursors"][role] = (done, read)
        self.position[group]["next_role"] = (role + 1) % self.num_workers
        return batch

    def state(self) -> dict:
        """{group: position} as JSON-ready data."""
        return {
            str(group): {**p, "cursors": {str(r): list(c) for r, c in p["cursors"].items()}}
            for group, p in self.position.items()
        }


def held_out_batches(
    source, resolution: int, teachers: list[TeacherSpec], batch_size: int, seed: int, indices: Sequence[int]
) -> Iterator[DistillBatch]:
    """Held-out images `indices` as whole-image square views (largest centred-by-seed square), in order."""
    dataset = DistillDataset(
        source, DistillView(resolution, teachers, 1.0, 1.0), seed=seed + EVAL_SEED_OFFSET
    )
    for start in range(0, len(indices), batch_size):
        yield collate_distill([dataset[(0, i)] for i in indices[start : start + batch_size]])
