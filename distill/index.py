"""The list of image files a folder source reads, built once per run and read with O(1) memory per process.

A 10^7-image folder cannot be listed by every rank, nor held by every DataLoader worker as a Python list
(about 1 GB each). Rank 0 writes the list once into the run directory; every rank and worker reads entry
`i` with two `os.pread` calls:

    <run>/data_index/<name>/paths.txt     one image path relative to data.path a line (UTF-8)
    <run>/data_index/<name>/offsets.u64   N + 1 little-endian uint64 byte offsets of those lines

The list comes from `data.index` (a text file of relative paths, one a line, as people keep for large data
sets) or from walking `data.path` (directories in name order, entries sorted per directory, so the order is
that of the sorted paths while memory stays O(largest directory)). The folder is written under a temporary
name and renamed, and an existing one is reused, so a resumed run reads exactly the same list.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tqdm import tqdm

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
PATHS, OFFSETS = "paths.txt", "offsets.u64"
_OFFSET = struct.Struct("<Q")
# Entries checked for existence when an index is opened: evenly spaced over it, so a wrong data.path or a
# stale list fails at start; files missing beyond the sample are skipped and counted during the run.
CHECKED_ENTRIES = 1000


def list_images(root: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Iterator[str]:
    """Paths (relative to `root`, '/'-separated) of every image file under `root`, in sorted-path order."""
    suffixes = tuple(e.lower() for e in extensions)

    def walk(directory: str, prefix: str) -> Iterator[str]:
        with os.scandir(directory) as entries:
            ordered = sorted(entries, key=lambda e: e.name)
        for entry in ordered:
            if entry.is_dir():
                yield from walk(entry.path, f"{prefix}{entry.name}/")
            elif entry.name.lower().endswith(suffixes) and entry.is_file():
                yield prefix + entry.name

    yield from walk(os.fspath(root), "")


def read_list(path: str | Path) -> Iterator[str]:
    """The non-empty lines of a user's list file, without line endings."""
    with open(path, encoding="utf-8") as file:
        for line in file:
            line = line.rstrip("\r\n")
            if line:
                yield line


def write_index(folder: str | Path, paths: Iterable[str]) -> int:
    """Write `paths` as an index folder (atomically: a temporary folder renamed); returns the count."""
    folder = Path(folder)
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    count, offset = 0, 0
    with open(tmp / PATHS, "wb") as text, open(tmp / OFFSETS, "wb") as offsets:
        offsets.write(_OFFSET.pack(0))
        for path in tqdm(paths, desc=f"indexing {folder.name}", unit=" files", mininterval=5, leave=False):
            if "\n" in path:
                logger.warning("skipping a file whose name holds a line break: %r", path)
                continue
            line = path.encode("utf-8") + b"\n"
            text.write(line)
            offset += len(line)
            offsets.write(_OFFSET.pack(offset))
            count += 1
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return count


class FileIndex(Sequence[str]):
    """Random access to an index folder's paths: `index[i]` reads one line; nothing is kept in memory."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        size = (self.folder / OFFSETS).stat().st_size
        self._length = size // _OFFSET.size - 1
        self._files: tuple[int, int] | None = None  # (paths fd, offsets fd), opened on first use per process

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} entries of {self.folder}")
        if self._files is None:
            self._files = (
                os.open(self.folder / PATHS, os.O_RDONLY),
                os.open(self.folder / OFFSETS, os.O_RDONLY),
            )
        paths, offsets = self._files
        start, stop = struct.unpack("<QQ", os.pread(offsets, 2 * _OFFSET.size, index * _OFFSET.size))
        return os.pread(paths, stop - start - 1, start).decode("utf-8")

    def __getstate__(self) -> dict:  # DataLoader workers (spawned or forked) open their own descriptors
        return {**self.__dict__, "_files": None}


def check_paths(index: FileIndex, root: str | Path, what: str, checked: int = CHECKED_ENTRIES) -> None:
    """Raise one error naming `what` (the list's origin), the first missing path and how many of the
    checked entries are missing, when entries of `index` (`checked` of them, evenly spaced) do not exist."""
    root = Path(root)
    size = min(checked, len(index))
    sample = sorted({i * len(index) // size for i in range(size)})
    missing = [index[i] for i in sample if not (root / index[i]).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{what}: {len(missing)} of {len(sample)} entries checked (evenly spaced over its {len(index)}) do "
            f"not exist under data.path {root}, the first {missing[0]!r}; fix the list or data.path (the "
            f"paths are relative to data.path)"
        )


def build_index(folder: str | Path, root: str | Path, list_file: str | Path | None = None) -> FileIndex:
    """The index at `folder`, written first unless it exists (a resumed run): from `list_file` when given,
    else by listing `root`. Checks a sample of the paths; raises when the list is empty."""
    folder, root = Path(folder), Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (data.path in the config)")
    what = f"data.index {list_file}" if list_file is not None else f"image folder {root}"
    if not (folder / OFFSETS).is_file():
        if list_file is not None and not Path(list_file).is_file():
            raise FileNotFoundError(f"data.index {list_file} does not exist; give a text file of image paths")
        paths = read_list(list_file) if list_file is not None else list_images(root)
        count = write_index(folder, paths)
        logger.info(f"{what}: {count:,} images indexed into {folder}")
    index = FileIndex(folder)
    if not len(index):
        raise ValueError(
            f"{what} lists no images" + ("" if list_file else f" (files ending in {list(IMAGE_EXTENSIONS)})")
        )
    check_paths(index, root, what)
    return index
