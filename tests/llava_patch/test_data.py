"""LLaVA JSON data: every bad-sample case is skipped and counted, the abort threshold, collation of mixed
image sizes and text-only samples, modality grouping."""

from __future__ import annotations

import copy

import numpy as np
import PIL.Image
import pytest
import torch

from llava_patch.conversation import IGNORE_INDEX, get_template
from llava_patch.data import (
    BadSample,
    LazySupervisedDataset,
    LlavaCollator,
    ModalityLengthGroupedSampler,
    TooManyBadSamples,
)
from llava_patch.model import build


@pytest.fixture(scope="module")
def tiny():
    return build("tiny-radio", "tiny-llama", long_edge=64)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (h, w) in {"wide.png": (40, 64), "tall.png": (64, 30), "square.png": (64, 64)}.items():
        PIL.Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return root


def qa(image: str | None, sample_id: str, question="<image>\nwhat color is it", answer="red") -> dict:
    record = {
        "id": sample_id,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
    }
    if image:
        record["image"] = image
    return record


GOOD = [
    qa("wide.png", "good-wide"),
    qa("tall.png", "good-tall"),
    qa(None, "good-text", question="name a color"),
    qa("square.png", "good-square", question="describe it\n<image>"),
]


def dataset(records, tiny, folder, template="vicuna_v1", **kwargs):
    return LazySupervisedDataset(
        records, folder, tiny[1], get_template(template), max_bad_fraction=1.0, **kwargs
    )


def test_bad_records_found_when_read_are_counted_by_reason(tiny, folder):
    bad = [
        {"id": "no-convs"},
        qa("wide.png", "no-tag", question="what color is it"),
        qa(None, "tag-without-image"),
        {
            "id": "not-alternating",
            "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}],
        },
        qa("wide.png", "empty-turn", answer="  "),
        qa("wide.png", "two-tags", question="<image> and <image>"),
    ]
    data = dataset(GOOD + bad, tiny, folder)
    assert len(data) == len(GOOD)
    assert data.bad_samples.counts == {
        "no conversations": 1,
        "no <image> where an image is given": 2,
        "<image> without an image": 1,
        "roles do not alternate": 1,
        "empty turn": 1,
    }
    assert "no-tag" in data.bad_samples.examples["no <image> where an image is given"]
    plain = dataset(GOOD, tiny, folder, template="plain")
    assert plain.bad_samples.counts == {"text-only sample in pretraining": 1}


def test_bad_samples_at_load_are_replaced_and_reported(tiny, folder):
    tokenizer = copy.copy(tiny[1].tokenizer)
    tokenizer.legacy = True  # a tokenizer that contradicts LLaVA's masking arithmetic on later rounds
    records = [qa("missing.png", "missing"), qa("corrupt.png", "corrupt"), *GOOD]
    first = dataset(records, tiny, folder)[0]  # missing and corrupt are skipped: the next good one stands in
    assert first["skipped"] == [("missing", "missing image"), ("corrupt", "corrupt image")]
    assert first["pixel_values"].shape == (3, 48, 64)  # 40x64 padded to a multiple of 16
    # the image tokens start at 41 (system prompt + "USER: "); answers are supervised from ~67 on
    short = dataset(GOOD, tiny, folder, max_length=55)
    with pytest.raises(BadSample, match="too long"):
        short.load(GOOD[3])  # 16 image tokens end at 57
    with pytest.raises(BadSample, match="nothing to train on"):
        short.load(GOOD[0])  # 12 image tokens fit, the answer is cut
    mismatch = qa(None, "mismatch", question="name a color")
    mismatch["conversations"] = mismatch["conversations"] * 2
    processor = copy.copy(tiny[1])
    processor.tokenizer = tokenizer
    data = LazySupervisedDataset(
        [mismatch, GOOD[2]], folder, processor, get_template("vicuna_v1"), max_bad_fraction=1
    )
    assert data[0]["skipped"] == [("mismatch", "masking mismatch")]


def test_abort_past_max_bad_fraction_with_summary(tiny, folder):
    records = GOOD * 10 + [qa(None, f"tag-{i}") for i in range(3)]  # 3 of 43 bad: 7%
    assert dataset(records, tiny, folder).bad_samples.num_bad == 3
    with pytest.raises(
        TooManyBadSamples, match=r"3 of 43 samples are bad(.|\n)*3 x <image> without an image"
    ):
        LazySupervisedDataset(records, folder, tiny[1], get_template("vicuna_v1"), max_bad_fraction=0.05)


def test_collated_mixed_batch_trains(tiny, folder):
    model, processor = tiny
    data = dataset(GOOD, tiny, folder)
    batch = LlavaCollator(processor.tokenizer.pad_token_id)([data[i] for i in range(len(data))])
    assert batch["pixel_values"].shape == (3, 3, 64, 64)  # three images, one text-only sample
    assert batch["image_sizes"].tolist() == [[48, 64], [64, 32], [64, 64]]
    image_tokens = (batch["input_ids"] == processor.image_token_id).sum(1).tolist()
    assert image_tokens == [12, 8, 0, 16]
    assert (batch["labels"][batch["input_ids"] == processor.image_token_id] == IGNORE_INDEX).all()
    assert batch["attention_mask"].sum(1).tolist() == [len(data[i]["input_ids"]) for i in range(4)]
    batch.pop("skipped")
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and model.model.multi_modal_projector.linear_1.weight.grad is not None
    model.zero_grad()


def test_modality_grouping_gives_single_modality_batches():
    lengths = [5, -3, 7, 9, -2, -8, 4, 6, -1, 3, -5, 2, 8]
    sampler = ModalityLengthGroupedSampler(2, 2, lengths, generator=torch.Generator().manual_seed(0))
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    full = order[: len(order) - len(order) % 4][:-4]  # the last, mixed megabatch holds the leftovers
    for start in range(0, len(full), 4):
        assert len({lengths[i] > 0 for i in full[start : start + 4]}) == 1
