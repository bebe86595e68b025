"""The synthetic benchmark: deterministic per seed, official formats, balanced POPE, disjoint images."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path

import pytest

from radio_vlm.demo.data import NUM_CONTENTS, SHAPES, SUFFIX, _Writer, make_demo_data, sample_scene


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_data(
        tmp_path_factory.mktemp("demo") / "d", seed=3, num_train=30, num_test=24, num_vision=12
    )


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_deterministic_per_seed(data, tmp_path):
    again = make_demo_data(tmp_path / "again", seed=3, num_train=30, num_test=24, num_vision=12)
    other = make_demo_data(tmp_path / "other", seed=4, num_train=30, num_test=24, num_vision=12)
    assert _digest(data) == _digest(again)
    assert _digest(data) != _digest(other)


def test_llava_training_formats(data):
    pretrain = json.loads((data / "train" / "pretrain.json").read_text())
    finetune = json.loads((data / "train" / "finetune.json").read_text())
    assert len(pretrain) == 30
    for sample in pretrain + finetune:
        turns = sample["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        if "image" in sample:
            assert (data / "train" / "images" / sample["image"]).is_file()
            assert turns[0]["value"].startswith("<image>\n")
            assert sum(t["value"].count("<image>") for t in turns) == 1
    assert any("image" not in s for s in finetune), "the fine-tuning mix has text-only samples"


def test_eval_formats_match_the_official_files(data):
    gqa = json.loads((data / "eval/gqa/testdev_balanced_questions.json").read_text())
    gqa_q = _jsonl(data / "eval/gqa/llava_gqa_testdev_balanced.jsonl")
    assert len(gqa_q) == 24 and all(gqa[q["question_id"]]["isBalanced"] for q in gqa_q)
    assert {gqa[q["question_id"]]["types"]["structural"] for q in gqa_q} == {"query", "verify"}

    textvqa = json.loads((data / "eval/textvqa/TextVQA_0.5.1_val.json").read_text())["data"]
    assert all(len(d["answers"]) == 10 for d in textvqa)  # LLaVA's evaluator asserts exactly 10
    tv_q = _jsonl(data / "eval/textvqa/llava_textvqa_val_v051_ocr.jsonl")
    assert all(len(q["text"].split("\n")) == 3 and "Reference OCR token: " in q["text"] for q in tv_q)
    assert [q["question_id"] for q in tv_q] == [
        d["image_id"] for d in textvqa
    ]  # LLaVA keys TextVQA by image id

    vqa = json.loads((data / "eval/vqav2/v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    assert {a["answer_type"] for a in vqa} == {"number", "other", "yes/no"}
    assert all(len(a["answers"]) == 10 for a in vqa)
    for path in data.glob("eval/*/llava_*.jsonl"):
        assert all(q["text"].endswith(SUFFIX) for q in _jsonl(path)), path


def test_pope_is_balanced_per_category(data):
    rows = _jsonl(data / "eval/pope/llava_pope_test.jsonl")
    assert len({r["question_id"] for r in rows}) == len(rows)
    for category in ("adversarial", "popular", "random"):
        labels = _jsonl(data / f"eval/pope/coco/coco_pope_{category}.json")
        assert [r["label"] for r in labels].count("yes") == [r["label"] for r in labels].count("no") > 0
        assert [r["question_id"] for r in labels] == [
            r["question_id"] for r in rows if r["category"] == category
        ]


def test_a_training_scene_is_never_drawn_for_a_test_set(tmp_path):
    first = sample_scene(random.Random(7))
    writer = _Writer(tmp_path, random.Random(7), exclude={first.content()})
    assert writer.new("x.png").content() != first.content()
    assert sample_scene(random.Random(7)) == first  # the same stream would have drawn it
    regreyed = dataclasses.replace(first, background=(1, 1, 1), width=first.height, height=first.width)
    assert regreyed.content() == first.content()  # size and grey do not make a scene new
    with pytest.raises(ValueError, match="all 1344 possible scene contents"):
        _Writer(tmp_path, random.Random(7), exclude=set(range(NUM_CONTENTS)))


def test_no_test_image_repeats_a_training_scene(tmp_path):
    from radio_vlm.demo import data as demo_data

    drawn = {}
    real_writer = demo_data._Writer

    class Recording(real_writer):
        def __init__(self, folder, rng, exclude=frozenset()):
            super().__init__(folder, rng, exclude)
            drawn[folder] = self

    mp = pytest.MonkeyPatch()
    mp.setattr(demo_data, "_Writer", Recording)
    import radio_vlm.demo.vision_data as vision_data

    mp.setattr(vision_data, "_Writer", Recording)
    try:
        make_demo_data(tmp_path / "d", seed=0, num_train=200, num_test=30, num_vision=12)
    finally:
        mp.undo()
    train = {s.content() for f, w in drawn.items() if f.parts[-2:] == ("train", "images") for s in w.drawn}
    tests = [w for f, w in drawn.items() if f.parts[-2:] != ("train", "images")]
    assert len(train) > 100 and len(tests) == 7  # 4 LLaVA benchmarks, classification, segmentation, COCO
    assert all(s.content() not in train for w in tests for s in w.drawn)


def test_vision_sets(data):
    import numpy as np
    from PIL import Image

    from radio_vlm.demo.vision_data import SEG_CLASSES

    vision = data / "vision"
    val = sorted((vision / "classify" / "val").iterdir())
    assert [p.name for p in val] == sorted(SHAPES) and {len(list(p.iterdir())) for p in val} == {
        3
    }  # 12 = 4 x 3
    assert sum(len(list(p.iterdir())) for p in (vision / "classify" / "train").iterdir()) == 30
    assert (vision / "segmentation" / "classes.txt").read_text().split() == list(SEG_CLASSES)
    for split, count in (("training", 24), ("validation", 6)):
        labels = sorted((vision / "segmentation" / "annotations" / split).iterdir())
        images = sorted((vision / "segmentation" / "images" / split).iterdir())
        assert len(labels) == len(images) == count
        for label, image in zip(labels, images):
            values = np.asarray(Image.open(label))
            assert values.shape == Image.open(image).size[::-1] and values.max() <= len(SEG_CLASSES)
            assert (values == 1).mean() > 0.3  # mostly background
    coco = json.loads((vision / "coco" / "annotations" / "instances_val2017.json").read_text())
    assert len(coco["images"]) == 6 and {c["name"] for c in coco["categories"]} == set(SHAPES)
    assert all((vision / "coco" / "val2017" / i["file_name"]).is_file() for i in coco["images"])
    assert all(a["area"] > 0 and len(a["bbox"]) == 4 for a in coco["annotations"])
