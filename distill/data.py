"""Distillation data: image sources, one random scale+crop view per sample, batches for a rank group.

Sources are index-based (`len`, `load(index) -> PIL RGB`): `ImageFolderSource` (the images of a folder,
through a `distill.index.FileIndex` so that a 10^7-image list costs no memory), `SyntheticSource`
(procedural, deterministic per index) and `SkimageSource` (scikit-image's photos); `DistillDataset` turns one
into map-style samples that any sampler can index. WebDataset tar shards (DataComp style, the recommended
format at that scale) stream through `WebDatasetStream`, which splits shards by rank and DataLoader worker,
yields whole batches and resumes from a saved position without decoding the samples it skips.

The view of sample `index` in `epoch` depends only on (seed, epoch, index) (for shards: the shard and
the position in it), so a resumed run sees the same crops. The crop is cut once from the image and
resized to the student's resolution ([0, 1] RGB) and to each teacher's resolution, normalised with the
teacher's mean/std. Unreadable (or missing) images are skipped (the next index takes their place in
map-style datasets), logged with their name and counted in `DistillBatch.num_skipped`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from distill.teachers import TeacherSpec
from radio_vlm.models.image_io import load_image

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------
# Sources


class ImageSource(Protocol):
    """What `DistillDataset` reads: a length and `load(index)`, which raises ValueError for unreadable images."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> PIL.Image.Image: ...


class ImageFolderSource:
    """The images `paths` (relative to `root`) lists, in its order: a `distill.index.FileIndex` for a
    training folder of any size, or a plain list."""

    def __init__(self, root: str | Path, paths: Sequence[str]) -> None:
        self.root, self.paths = Path(root).expanduser(), paths

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> PIL.Image.Image:
        return load_image(self.root / self.paths[index])


class SyntheticSource:
    """Procedural images (gradients, stripes, ellipses, rectangles), deterministic per (seed, index), with
    varied sizes and aspect ratios. Structured enough that a tiny student can learn tiny teachers."""

    def __init__(self, num_images: int = 256, min_size: int = 64, max_size: int = 192, seed: int = 0) -> None:
        self.num_images, self.min_size, self.max_size, self.seed = num_images, min_size, max_size, seed

    def __len__(self) -> int:
        return self.num_images

    def load(self, index: int) -> PIL.Image.Image:
        rng = np.random.default_rng([self.seed, index])
        height, width = rng.integers(self.min_size, self.max_size + 1, size=2)
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        y, x = y / height, x / width
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * x + np.sin(angle) * y)[..., None]
        c0, c1 = rng.uniform(0, 1, size=(2, 3)).astype(np.float32)
        image = c0 + (c1 - c0) * (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
        freq, phase = rng.uniform(2, 12), rng.uniform(0, 2 * np.pi)
        image += 0.15 * np.sin(2 * np.pi * freq * (x if rng.random() < 0.5 else y) + phase)[..., None]
        for _ in range(rng.integers(2, 7)):
            cy, cx, ry, rx = (
                rng.uniform(0, 1),
                rng.uniform(0, 1),
                rng.uniform(0.05, 0.4),
                rng.uniform(0.05, 0.4),
            )
            if rng.random() < 0.5:
                mask = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
            else:
                mask = (np.abs(y - cy) <= ry / 2) & (np.abs(x - cx) <= rx / 2)
            image[mask] = rng.uniform(0, 1, size=3)
        image += rng.normal(0, 0.02, size=image.shape).astype(np.float32)
        return PIL.Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), mode="RGB")


# scikit-image's bundled photos (no download): natural, microscopy, astronomy, text and texture images.
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "colorwheel",
                  "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina",
                  "rocket", "text")  # fmt: skip


class SkimageSource:
    """scikit-image's sample photos (`skimage.data`), in a fixed order."""

    def __init__(self, names: Sequence[str] = SKIMAGE_PHOTOS) -> None:
        import skimage.data

        self._data = skimage.data
        unknown = [n for n in names if not hasattr(skimage.data, n)]
        if unknown:
            raise ValueError(f"skimage.data has no images {unknown}; choose from {list(SKIMAGE_PHOTOS)}")
        self.names = list(names)

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> PIL.Image.Image:
        return load_image(getattr(self._data, self.names[index])(), name=f"skimage.data.{self.names[index]}")


# ----------------------------------------------------------------------------------------------------------
# The shared view


def view_rng(seed: int, epoch: int, *index: int) -> np.random.Generator:
    """The RNG of one sample's view: a pure function of (seed, epoch, index...)."""
    return np.random.default_rng([seed, epoch, *index])


class DistillView:
    """One random square scale+crop of an image, resized for the student and for every teacher.

    The crop's side is sqrt(u) times the image's short side, u ~ U(min_scale, max_scale) (the crop's area
    as a fraction of the largest square), at a uniform position; it is resampled (bicubic, PIL) straight
    from the source pixels to each resolution.
    """

    def __init__(
        self,
        student_resolution: int,
        teachers: Sequence[TeacherSpec],
        min_scale: float = 0.35,
        max_scale: float = 1.0,
    ) -> None:
        if not 0 < min_scale <= max_scale <= 1:
            raise ValueError(
                f"view scales must satisfy 0 < min_scale <= max_scale <= 1, got {min_scale}, {max_scale}"
            )
        self.student_resolution = student_resolution
        self.teachers = list(teachers)
        self.min_scale, self.max_scale = min_scale, max_scale
        self._mean = {t.name: torch.tensor(t.mean).view(3, 1, 1) for t in self.teachers}
        self._std = {t.name: torch.tensor(t.std).view(3, 1, 1) for t in self.teachers}

    def crop_box(
        self, width: int, height: int, rng: np.random.Generator
    ) -> tuple[float, float, float, float]:
        side = min(width, height) * math.sqrt(rng.uniform(self.min_scale, self.max_scale))
        left, top = rng.uniform(0, width - side), rng.uniform(0, height - side)
        return (left, top, left + side, top + side)

    def __call__(
        self, image: PIL.Image.Image, rng: np.random.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """RGB image -> (student (3, S, S) in [0, 1], {teacher: (3, R, R) normalised})."""
        box = self.crop_box(image.width, image.height, rng)
        resized: dict[int, torch.Tensor] = {}

        def at(resolution: int) -> torch.Tensor:
            if resolution not in resized:
                pixels = image.resize((resolution, resolution), PIL.Image.BICUBIC, box=box)
                resized[resolution] = torch.from_numpy(np.asarray(pixels, dtype=np.float32) / 255.0).permute(
                    2, 0, 1
                )
            return resized[resolution]

        student = at(self.student_resolution)
        teachers = {
            t.name: (at(t.resolution) - self._mean[t.name]) / self._std[t.name] for t in self.teachers
        }
        return student, teachers


# ----------------------------------------------------------------------------------------------------------
# Samples and batches


@dataclass
class DistillSample:
    student_image: torch.Tensor  # (3, S, S) in [0, 1]
    teacher_images: dict[str, torch.Tensor]  # teacher -> (3, R, R), normalised for that teacher
    sample_id: int  # dataset index (map-style) or shard * SHARD_STRIDE + position (WebDataset)
    skipped: int  # unreadable images skipped to produce this sample


@dataclass
class DistillBatch:
    """student_images (B, 3, S, S) in [0, 1]; teacher_images {teacher: (B, 3, R, R)} normalised;
    sample_ids (B,); num_skipped: unreadable images skipped while building this batch; stream_state: for
    WebDataset batches, (worker role, shards finished, records read in the current shard) after the batch."""

    student_images: torch.Tensor
    teacher_images: dict[str, torch.Tensor]
    sample_ids: torch.Tensor
    num_skipped: int
    stream_state: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return self.student_images.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = True) -> DistillBatch:
        return dataclasses.replace(
            self,
            student_images=self.student_images.to(device, non_blocking=non_blocking),
            teacher_images={
                k: v.to(device, non_blocking=non_blocking) for k, v in self.teacher_images.items()
            },
        )

    def pin_memory(self) -> DistillBatch:  # called by DataLoader(pin_memory=True)
        return dataclasses.replace(
            self,
            student_images=self.student_images.pin_memory(),
            teacher_images={k: v.pin_memory() for k, v in self.teacher_images.items()},
        )


def collate_distill(samples: Sequence[DistillSample]) -> DistillBatch:
    """DataLoader collate_fn for `DistillDataset`."""
    return DistillBatch(
        student_images=torch.stack([s.student_image for s in samples]),
        teacher_images={
            k: torch.stack([s.teacher_images[k] for s in samples]) for k in samples[0].teacher_images
        },
        sample_ids=torch.tensor([s.sample_id for s in samples]),
        num_skipped=sum(s.skipped for s in samples),
    )


class DistillDataset(Dataset):
    """Map-style samples of an index-based source: `dataset[index]` or `dataset[(epoch, index)]`.

    The tuple form lets a sampler carry the epoch into DataLoader workers; the plain form uses the epoch
    from `set_epoch`. An unreadable image is replaced by the next readable index (at most `max_skips`
    tries), so batches keep their size and the replacement is deterministic.
    """

    def __init__(self, source: ImageSource, view: DistillView, seed: int = 0, max_skips: int = 64) -> None:
        if len(source) == 0:
            raise ValueError("the image source is empty")
        self.source, self.view, self.seed, self.max_skips = source, view, seed, max_skips
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: int | tuple[int, int]) -> DistillSample:
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
        for skipped in range(min(self.max_skips, len(self.source))):
            candidate = (index + skipped) % len(self.source)
            try:
                image = self.source.load(candidate)
            except ValueError as err:  # load_image's errors name the file and the problem
                logger.warning("skipping unreadable image: %s", err)
                continue
            student, teachers = self.view(image, view_rng(self.seed, epoch, index))
            return DistillSample(student, teachers, index, skipped)
        raise RuntimeError(
            f"{self.max_skips} consecutive images from index {index} are unreadable; check the data"
        )


# ----------------------------------------------------------------------------------------------------------
# WebDataset shards (DataComp style: <key>.jpg/.png/.webp next to .txt/.json in tar files)

SHARD_STRIDE = 1_000_000  # sample_id = shard index * SHARD_STRIDE + position in the shard
_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


class WebDatasetStream(IterableDataset):
    """Batches from WebDataset tar shards for one rank: use `DataLoader(stream, batch_size=None, ...)`.

    Shards are shuffled per epoch (seeded) and dealt to (rank, worker) slots round-robin; each worker role
    reads its shards in order and yields full batches of `batch_size` (a final partial batch is dropped,
    so every step has the same size). Every batch carries `stream_state = (role, shards finished, records
    read in the current shard)`. The DataLoader takes batches from its workers in turn, skipping exhausted
    ones, so the position of an epoch is each role's cursor plus the role that comes next
    (`set_position`): a resumed stream seeks every role to its cursor, reading the skipped records of the
    current shard without decoding them (finished shards are not opened), and restarts the turn at that
    role. Call `set_epoch` / `set_position` before iterating (workers copy the stream when an iterator
    starts; no persistent_workers).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        view: DistillView,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        import webdataset as wds

        self.urls = list(wds.shardlists.expand_urls(urls) if isinstance(urls, str) else urls)
        missing = [u for u in self.urls if "://" not in u and not Path(u).is_file()]
        if missing:
            raise FileNotFoundError(f"WebDataset shards not found: {missing[:3]} ({len(missing)} missing)")
        self.view, self.batch_size, self.seed = view, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.cursors, self.next_role = epoch, {}, 0

    def set_position(self, cursors: dict[int, tuple[int, int]], next_role: int) -> None:
        """Resume this epoch: role -> (shards finished, records read in the next one); `next_role` yields
        the next batch."""
        self.cursors, self.next_role = dict(cursors), next_role

    def shards_for(self, role: int, num_workers: int) -> list[tuple[int, str]]:
        """(shard index, url) read by worker `role` of this rank in this epoch."""
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.urls))
        slots = self.world_size * num_workers
        if len(self.urls) < slots:
            raise ValueError(
                f"{len(self.urls)} shards cannot feed {self.world_size} ranks x {num_workers} workers; "
                f"use fewer DataLoader workers or split the data into more shards"
            )
        slot = self.rank * num_workers + role
        return [(int(i), self.urls[i]) for i in order[slot::slots]]

    def _records(self, role: int, num_workers: int) -> Iterator[tuple[dict, int, int, tuple[int, int]]]:
        """(raw record, shard, position, cursor after it) from the role's cursor on; nothing is decoded."""
        import webdataset as wds

        done, read = self.cursors.get(role, (0, 0))
        for k, (shard, url) in enumerate(self.shards_for(role, num_workers)):
            if k < done:
                continue
            reader = wds.WebDataset(url, shardshuffle=False, nodesplitter=None, workersplitter=None,
                                    empty_check=False, handler=self._on_tar_error)  # fmt: skip
            for position, record in enumerate(reader):
                if k == done and position < read:
                    continue  # read (tar framing), never decoded
                yield record, shard, position, (k, position + 1)

    @staticmethod
    def _on_tar_error(err: Exception) -> bool:
        logger.warning("skipping unreadable WebDataset entry: %r", err)
        return True  # continue with the next entry

    def _sample(
        self, record: dict, shard: int, position: int, skipped: int, url: str
    ) -> DistillSample | None:
        name = f"{url}:{record.get('__key__', position)}"
        key = next((k for k in _IMAGE_KEYS if k in record), None)
        try:
            if key is None:
                raise ValueError(f"{name}: no image entry (expected one of {_IMAGE_KEYS})")
            image = load_image(record[key], name=name)
        except ValueError as err:
            logger.warning("skipping unreadable image: %s", err)
            return None
        student, teachers = self.view(image, view_rng(self.seed, self.epoch, shard, position))
        return DistillSample(student, teachers, shard * SHARD_STRIDE + position, skipped)

    def __iter__(self) -> Iterator[DistillBatch]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        role = (worker + self.next_role) % num_workers  # the DataLoader asks worker 0 first
        pending, skipped = [], 0
        for record, shard, position, cursor in self._records(role, num_workers):
            sample = self._sample(record, shard, position, skipped, self.urls[shard])
            if sample is None:
                skipped += 1
                continue
            pending.append(sample)
            skipped = 0
            if len(pending) == self.batch_size:
                batch = collate_distill(pending)
                yield dataclasses.replace(batch, stream_state=(role, *cursor))
                pending = []
