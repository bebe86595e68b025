"""Batches for each rank group, in an order that is a function of the step alone.

Global sample number n (from `RankPlan.sample_indices`) reads image `perm_e[n % N]` of epoch
e = n // N, where perm_e is a seeded permutation of the N training images; the view of that image is a
function of (seed, epoch, index) (`distill.data`). A resumed run therefore rebuilds exactly the batches
the interrupted one would have seen, with no sampler state to save. Held-out images for the final
evaluation are never trained on: a separately seeded synthetic pool, the last `eval_images` images of a
folder or of scikit-image's photos, or `data.eval_path`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import DataLoader, Sampler

from distill.config import DataConfig, GroupConfig
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
from distill.partition import RankPlan
from distill.teachers import TeacherSpec

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


def build_sources(data: DataConfig, seed: int):
    """(training source, held-out source) for the config's `data` section."""
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
        source = ImageFolderSource(data.path)
        if data.eval_path is None:
            train, held_out = _held_out_split(source, data.eval_images, f"image folder {data.path}")
        else:
            train = source
    else:
        raise ValueError(
            f"data.source: unknown {data.source!r}; choose synthetic, skimage, folder or webdataset"
        )
    if data.eval_path is not None:
        held_out = ImageFolderSource(data.eval_path)
    return train, held_out


def sample_item(number: int, num_images: int, seed: int) -> tuple[int, int]:
    """(epoch, image index) read by global sample `number`: a seeded shuffle per epoch."""
    epoch = number // num_images
    order = np.random.default_rng([seed, epoch, 7]).permutation(num_images)
    return epoch, int(order[number % num_images])


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

    Shards are dealt to the ranks of a group (`distill.data.WebDatasetStream`); a group's position on this
    rank, (epoch, batches read in the epoch), is returned by `state()` for the checkpoint and given back on
    resume, so the stream continues where it stopped.
    """

    def __init__(self, urls: str, groups: list[GroupConfig], specs: dict[str, TeacherSpec], plan: RankPlan,
                 data: DataConfig, seed: int, position: dict | None = None) -> None:  # fmt: skip
        if plan.sampling != "fixed":
            raise ValueError("data.source 'webdataset' needs distributed.group_sampling: fixed")
        self.num_workers, self.streams, self.position, self._iterators = data.num_workers, {}, {}, {}
        for assignment in plan.assignments(0):
            group = groups[assignment.group]
            view = DistillView(
                group.resolution, [specs[t] for t in group.teachers], data.min_scale, data.max_scale
            )
            self.streams[assignment.group] = WebDatasetStream(
                urls, view, group.batch_size, seed, rank=assignment.slot, world_size=assignment.num_slots
            )
            self.position[assignment.group] = list((position or {}).get(str(assignment.group), (0, 0)))
            self._restart(assignment.group)

    def _restart(self, group: int) -> None:
        stream, (epoch, done) = self.streams[group], self.position[group]
        stream.set_epoch(epoch)
        stream.set_start(done)
        self._iterators[group] = iter(DataLoader(stream, batch_size=None, num_workers=self.num_workers))

    def next_batch(self, group: int) -> DistillBatch:
        try:
            batch = next(self._iterators[group])
        except StopIteration:  # end of the epoch's shards: next epoch, reshuffled
            self.position[group] = [self.position[group][0] + 1, 0]
            self._restart(group)
            batch = next(self._iterators[group])
        self.position[group][1] += 1
        return batch

    def state(self) -> dict:
        return {str(group): list(position) for group, position in self.position.items()}


def held_out_batches(
    source, resolution: int, teachers: list[TeacherSpec], batch_size: int, seed: int
) -> Iterator[DistillBatch]:
    """The held-out images as whole-image square views (largest centred-by-seed square), in order."""
    dataset = DistillDataset(
        source, DistillView(resolution, teachers, 1.0, 1.0), seed=seed + EVAL_SEED_OFFSET
    )
    for start in range(0, len(dataset), batch_size):
        yield collate_distill([dataset[(0, i)] for i in range(start, min(start + batch_size, len(dataset)))])
