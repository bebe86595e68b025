"""Batch order: a function of the step for map-style data, a saved position for WebDataset shards; held-out
images are never trained on."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from distill.batches import GroupBatches, ShardBatches, build_sources
from distill.config import load_config
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


@pytest.fixture
def shards(tmp_path):
    import webdataset as wds

    source = SyntheticSource(14, min_size=48, max_size=64, seed=3)
    for s in range(2):
        with wds.TarWriter(str(tmp_path / f"shard-{s}.tar")) as writer:
            for i in range(s * 7, s * 7 + 7):
                buffer = io.BytesIO()
                source.load(i).save(buffer, format="PNG")
                writer.write({"__key__": f"{i:04d}", "png": buffer.getvalue()})
    (tmp_path / "eval").mkdir()
    source.load(0).save(tmp_path / "eval/0.png")
    return tmp_path


def test_webdataset_position_is_saved_and_restored_across_epochs(shards):
    pattern = str(shards / "shard-{0..1}.tar")
    config, specs, plan = _setup(
        "data.source=webdataset", f"data.path={pattern}", f"data.eval_path={shards / 'eval'}"
    )
    train, _ = build_sources(config.data, 0)
    full = ShardBatches(train, config.groups, specs, plan, config.data, 0)
    batches = [full.next_batch(0) for _ in range(7)]  # 14 images / 3 per batch: 4 batches an epoch (2 shards)
    assert full.state() == {"0": [1, 3]}
    first = ShardBatches(train, config.groups, specs, plan, config.data, 0)
    for _ in range(5):
        first.next_batch(0)
    resumed = ShardBatches(train, config.groups, specs, plan, config.data, 0, position=first.state())
    for expected in batches[5:]:
        got = resumed.next_batch(0)
        assert got.sample_ids.tolist() == expected.sample_ids.tolist()
        torch.testing.assert_close(got.student_images, expected.student_images)
