"""Data that scales: the per-run file index (built once, read in O(1) memory), its checks on bad lists, and the
O(1) per-epoch shuffle of map-style sources."""

from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import PIL.Image
import pytest

from distill.batches import FeistelPermutation, build_sources, sample_item
from distill.config import DataConfig
from distill.index import FileIndex, build_index, list_images, write_index


def _png(path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)


def test_listing_is_in_sorted_path_order_and_keeps_only_images(tmp_path):
    for name in ("b/2.png", "a/z.JPG", "a/b/1.png", "a1.png", "c.webp", "notes.txt", "a/sub/deep/x.jpeg"):
        if name.endswith(".txt"):
            (tmp_path / name).write_text("not an image")
        else:
            _png(tmp_path / name)
    listed = list(list_images(tmp_path))
    expected = sorted(
        (p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".txt"),
        key=lambda p: p.parts,
    )
    assert listed == [p.as_posix() for p in expected]
    assert "a/z.JPG" in listed  # extensions match case-insensitively


def test_index_round_trip_random_access_and_pickling(tmp_path):
    paths = [f"dir{i % 7}/image {i} é.jpg" for i in range(5000)]  # spaces and non-ASCII survive
    assert write_index(tmp_path / "index", iter(paths)) == 5000
    index = FileIndex(tmp_path / "index")
    assert len(index) == 5000
    for i in (0, 1, 2499, 4999):
        assert index[i] == paths[i]
    with pytest.raises(IndexError):
        index[5000]
    copy = pickle.loads(pickle.dumps(index))  # what a DataLoader worker receives: no open descriptors
    assert copy._files is None and copy[1234] == paths[1234]


def test_index_access_needs_no_memory_per_entry(tmp_path):
    count = 200_000
    write_index(tmp_path / "index", (f"shard{i // 1000:04d}/{i:09d}.jpg" for i in range(count)))
    tracemalloc.start()
    index = FileIndex(tmp_path / "index")
    looked_up = [index[(i * 7919) % count] for i in range(2000)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert looked_up[1] == "shard0007/000007919.jpg"
    assert peak < 1_000_000  # well under 5 bytes an entry: the list stays on disk


def test_a_users_list_is_copied_into_the_run_once_and_reused(tmp_path):
    root = tmp_path / "images"
    for i in range(4):
        _png(root / f"x/{i}.png", i)
    listing = tmp_path / "files.txt"
    listing.write_text("x/3.png\r\nx/1.png\n\nx/0.png\n")  # CRLF and blank lines are tolerated
    index = build_index(tmp_path / "run/data_index/train", root, listing)
    assert list(index) == ["x/3.png", "x/1.png", "x/0.png"]
    listing.write_text("x/2.png\n")  # a resumed run keeps reading the run's copy
    assert list(build_index(tmp_path / "run/data_index/train", root, listing)) == [
        "x/3.png",
        "x/1.png",
        "x/0.png",
    ]


def test_a_list_of_missing_paths_is_one_error_naming_the_file_the_first_path_and_the_count(tmp_path):
    root = tmp_path / "images"
    _png(root / "ok.png")
    listing = tmp_path / "files.txt"
    listing.write_text("ok.png\ngone/1.jpg\nok.png\ngone/2.jpg\n")
    data = DataConfig(source="folder", path=str(root), index=str(listing), eval_images=1)
    with pytest.raises(FileNotFoundError) as error:
        build_sources(data, 0, tmp_path / "run/data_index")
    message = str(error.value)
    assert str(listing) in message and "'gone/1.jpg'" in message and "2 of 4 entries" in message
    with pytest.raises(FileNotFoundError, match="data.index .*nope.txt does not exist"):
        build_sources(
            DataConfig(source="folder", path=str(root), index=str(tmp_path / "nope.txt")), 0, tmp_path / "r2"
        )
    with pytest.raises(FileNotFoundError, match="image folder .*missing does not exist"):
        build_sources(DataConfig(source="folder", path=str(tmp_path / "missing")), 0, tmp_path / "r3")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="lists no images"):
        build_sources(DataConfig(source="folder", path=str(tmp_path / "empty")), 0, tmp_path / "r4")


def test_a_folder_source_holds_out_the_last_images_of_its_index(tmp_path):
    for i in range(6):
        _png(tmp_path / "images" / f"{i}.png", i)
    train, held_out = build_sources(
        DataConfig(source="folder", path=str(tmp_path / "images"), eval_images=2),
        0,
        tmp_path / "run/data_index",
    )
    assert len(train) == 4 and len(held_out) == 2
    assert (tmp_path / "run/data_index/train/paths.txt").read_text().split() == [f"{i}.png" for i in range(6)]
    assert np.array_equal(np.asarray(held_out.load(1)), np.asarray(PIL.Image.open(tmp_path / "images/5.png")))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 64, 1000, 4097])
def test_feistel_permutation_is_a_bijection(n):
    permutation = FeistelPermutation(n, key=12345)
    assert sorted(permutation(i) for i in range(n)) == list(range(n))


def test_epoch_shuffles_differ_by_epoch_and_seed_and_look_random():
    n = 1000
    first = [sample_item(i, n, seed=0)[1] for i in range(n)]
    second = [sample_item(n + i, n, seed=0)[1] for i in range(n)]  # epoch 1
    other_seed = [sample_item(i, n, seed=1)[1] for i in range(n)]
    assert sample_item(n + 5, n, seed=0)[0] == 1
    assert first != second and first != other_seed
    assert first == [sample_item(i, n, seed=0)[1] for i in range(n)]  # a function of (seed, number) alone
    # no visible structure: position and image are uncorrelated, neighbours are not runs of the same stride
    assert abs(np.corrcoef(np.arange(n), first)[0, 1]) < 0.1
    assert len(set(np.diff(first).tolist())) > n // 2
    assert sum(a == b for a, b in zip(first, second)) < 10


def test_sampling_cost_does_not_grow_with_the_number_of_images():
    tracemalloc.start()
    items = [sample_item(10**12 + k, 10**12, seed=3) for k in range(100)]  # a trillion-image epoch
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert {epoch for epoch, _ in items} == {1} and len({i for _, i in items}) == 100
    assert all(0 <= i < 10**12 for _, i in items) and peak < 100_000
