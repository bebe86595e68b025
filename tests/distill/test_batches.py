"""Batch order: a function of the step for map-style data, a saved position for WebDataset shards; held-out
images are never trained on."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from distill.batches import GroupBatches, ShardBatches, build_sources
from distill.config import ConfigError, load_config
from distill.data import SyntheticSource
from distill.partition import RankPlan
from distill.teachers import get_teacher_spec

TINY = Path(__file__).resolve().parents[2] / "configs/distill/tiny.yaml"


def _setup(*overrides):
    config = load_config(
        TINY, ["groups.0.batch_size=3", "data.num_images=10", "data.eval_images=2", *overrides]
    )
    specs = {t.name: get_teacher_spec(t.name) for t in config.teachers}
    return config, specs, RankPlan(config.groups, 0, 1, "fixed", config.train.seed)


def test_map_style_batches_resume_from_the_step_alone():
    config, specs, plan = _setup("data.num_workers=0")
    train, held_out = build_sources(config.data, config.train.seed)
    full = GroupBatches(train, config.groups, specs, plan, config.data, 0, 0, 6, 1)
    ids = [full.next_batch(0).sample_ids.tolist() for _ in range(6)]
    first_epoch = [i for b in ids for i in b][:10]
    assert sorted(first_epoch) == list(range(10)) and first_epoch != list(range(10))  # a shuffled epoch
    resumed = GroupBatches(train, config.groups, specs, plan, config.data, 0, 4, 6, 1)
    assert [resumed.next_batch(0).sample_ids.tolist() for _ in range(2)] == ids[4:]
    assert held_out.seed != train.source.seed  # a separately seeded held-out pool


def _write_shards(folder: Path, sizes: list[int], corrupt: tuple[int, int] | None = None) -> str:
    """Shards `shard-{k}.tar` of sizes[k] synthetic PNGs (record `corrupt` = (shard, position) is garbage);
    returns the brace pattern."""
    import webdataset as wds

    source, n = SyntheticSource(sum(sizes), min_size=48, max_size=64, seed=3), 0
    for k, size in enumerate(sizes):
        with wds.TarWriter(str(folder / f"shard-{k}.tar")) as writer:
            for position in range(size):
                buffer = io.BytesIO()
                source.load(n).save(buffer, format="PNG")
                data = b"garbage" if corrupt == (k, position) else buffer.getvalue()
                writer.write({"__key__": f"{n:04d}", "png": data})
                n += 1
    (folder / "eval").mkdir(exist_ok=True)
    source.load(0).save(folder / "eval/0.png")
    return str(folder / f"shard-{{0..{len(sizes) - 1}}}.tar")


def _shard_setup(pattern: str, folder: Path, workers: int):
    config, specs, plan = _setup(
        "data.source=webdataset", f"data.path={pattern}", f"data.eval_path={folder / 'eval'}",
        f"data.num_workers={workers}",
    )  # fmt: skip
    train, _ = build_sources(config.data, 0, folder / "data_index")
    return lambda position=None: ShardBatches(train, config.groups, specs, plan, config.data, 0, position)


def test_webdataset_position_is_saved_and_restored_across_epochs(tmp_path):
    make = _shard_setup(_write_shards(tmp_path, [7, 7]), tmp_path, workers=0)
    full = make()
    batches = [full.next_batch(0) for _ in range(7)]  # 14 images / 3 per batch: 4 batches an epoch (2 shards)
    assert full.state()["0"]["epoch"] == 1
    first = make()
    for _ in range(5):
        first.next_batch(0)
    resumed = make(position=json.loads(json.dumps(first.state())))  # through the checkpoint's JSON
    for expected in batches[5:]:
        got = resumed.next_batch(0)
        assert got.sample_ids.tolist() == expected.sample_ids.tolist()
        torch.testing.assert_close(got.student_images, expected.student_images)


def test_webdataset_resume_is_exact_with_workers_at_any_position_and_epoch_boundary(tmp_path):
    # uneven shards over 2 workers: one worker runs out while the other still yields (the DataLoader then
    # takes batches from the remaining one only); a corrupt record shifts one worker's batches
    make = _shard_setup(_write_shards(tmp_path, [9, 4, 7, 3, 8], corrupt=(2, 1)), tmp_path, workers=2)
    full, states, ids = make(), [], []
    for _ in range(14):  # an epoch and a half
        ids.append(full.next_batch(0).sample_ids.tolist())
        states.append(json.loads(json.dumps(full.state())))
    epochs = [s["0"]["epoch"] for s in states]
    assert epochs[0] == 0 and epochs[-1] == 1
    boundary = epochs.index(1) - 1  # the last batch of epoch 0
    for stop in sorted({0, 2, 3, 4, boundary, boundary + 1, boundary + 3}):
        resumed = make(position=states[stop])
        again = [resumed.next_batch(0).sample_ids.tolist() for _ in range(stop + 1, min(stop + 6, len(ids)))]
        assert again == ids[stop + 1 : stop + 1 + len(again)], stop
    with pytest.raises(ConfigError, match="same data.num_workers"):
        _shard_setup(_write_shards(tmp_path, [9, 4, 7, 3, 8]), tmp_path, workers=1)(position=states[3])
