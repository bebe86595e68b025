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
    BadSampleLog,
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
    assert data.bad_samples.ids("no <image> where an image is given") == ["no-tag", "two-tags"]
    plain = dataset(GOOD, tiny, folder, template="plain")
    assert plain.bad_samples.counts == {"text-only sample in pretraining": 1}


def test_bad_samples_at_load_are_replaced_and_reported(tiny, folder):
    tokenizer = copy.copy(tiny[1].tokenizer)
    tokenizer.legacy = True  # a tokenizer that contradicts LLaVA's masking arithmetic on later rounds
    records = [qa("missing.png", "missing"), qa("corrupt.png", "corrupt"), *GOOD]
    first = dataset(records, tiny, folder)[0]  # missing and corrupt are skipped: the next good one stands in
    assert [entry[:3] for entry in first["skipped"]] == [
        (0, "missing", "missing image"),
        (1, "corrupt", "corrupt image"),
    ]
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
    assert [entry[:3] for entry in data[0]["skipped"]] == [(0, "mismatch", "masking mismatch")]


def test_abort_past_max_bad_fraction_with_summary(tiny, folder):
    records = GOOD * 10 + [qa(None, f"tag-{i}") for i in range(3)]  # 3 of 43 bad: 7%
    assert dataset(records, tiny, folder).bad_samples.num_bad == 3
    with pytest.raises(
        TooManyBadSamples, match=r"3 of 43 samples are bad(.|\n)*3 x <image> without an image"
    ):
        LazySupervisedDataset(records, folder, tiny[1], get_template("vicuna_v1"), max_bad_fraction=0.05)


def test_a_bad_sample_is_counted_once_however_often_it_is_drawn(tiny, folder):
    records = [
        GOOD[0],
        qa("gone-1.png", "gone-1"),
        qa("gone-2.png", "gone-2"),
        GOOD[1],
        qa("corrupt.png", "broken"),
    ]
    data = dataset(records, tiny, folder)
    log = data.bad_samples
    # gone-1 drawn: its stand-in gone-2 is bad too; both are reported, with their positions in the file
    first = data[1]["skipped"]
    assert [entry[:2] for entry in first] == [(1, "gone-1"), (2, "gone-2")]
    assert data[2]["skipped"] == []  # this process reported gone-2 already: skipped without a reload
    another_worker = dataset(records, tiny, folder)  # a DataLoader worker or another rank has its own copy
    again = another_worker[2]["skipped"]
    assert [entry[:2] for entry in again] == [(2, "gone-2")]
    for _epoch in range(3):  # every sample drawn three times, some as stand-ins too
        for entries in [first, again] + [data[i]["skipped"] for i in range(len(data))]:
            for entry in entries:
                log.add(*entry, check=False)
    assert log.num_bad == 3 and log.counts == {"missing image": 2, "corrupt image": 1}
    summary = log.summary()
    assert summary.startswith("3 of 5 samples are bad") and "(ids gone-1, gone-2)" in summary, summary
    assert summary.count("gone-2") == 1


def test_bad_samples_are_counted_once_with_dataloader_workers(tiny, folder):
    records = [
        *GOOD,
        qa("gone-1.png", "gone-1"),
        qa("gone-2.png", "gone-2"),
        *GOOD,
        qa("corrupt.png", "broken"),
    ]
    data = dataset(records, tiny, folder)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=2,
        shuffle=True,
        num_workers=2,
        collate_fn=LlavaCollator.for_processor(tiny[1]),
        generator=torch.Generator().manual_seed(0),
    )
    reported = 0
    for _epoch in range(2):
        for batch in loader:  # as LlavaTrainer: each batch's skipped samples into the one log
            reported += len(batch["skipped"])
            for entry in batch["skipped"]:
                data.bad_samples.add(*entry, check=False)
    assert reported > 3  # each worker, each epoch, finds them again ...
    assert data.bad_samples.num_bad == 3  # ... and each counts once
    assert sorted(e[0] for e in data.bad_samples.samples.values()) == ["broken", "gone-1", "gone-2"]


def test_the_abort_counts_distinct_samples_and_lists_each_once():
    log = BadSampleLog(total=10, max_fraction=0.1)
    assert log.add(3, "x", "missing image") and not log.add(3, "x", "missing image")  # 1 of 10: not past 10%
    with pytest.raises(
        TooManyBadSamples, match=r"2 of 10 samples are bad:\n  2 x missing image \(ids x, y\)"
    ):
        log.add(5, "y", "missing image")


def test_collated_mixed_batch_trains(tiny, folder):
    model, processor = tiny
    data = dataset(GOOD, tiny, folder)
    batch = LlavaCollator.for_processor(processor)([data[i] for i in range(len(data))])
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


@pytest.mark.parametrize("step", [16, 32])  # the tower's min_resolution_step (E-RADIO: 32)
def test_a_text_only_batch_runs_the_tower_on_a_dummy_image_and_keeps_its_loss(tiny, folder, step):
    model, processor = tiny
    data = dataset([GOOD[2], qa(None, "text-2", question="name a shape", answer="a circle")], tiny, folder)
    tokens = (step // 16) ** 2  # in extra, masked columns after every real token
    collator = LlavaCollator(processor.tokenizer.pad_token_id, processor.image_token_id, step, tokens)
    batch = collator([data[0], data[1]])
    batch.pop("skipped")
    assert batch["pixel_values"].shape == (1, 3, step, step) and batch["image_sizes"].tolist() == [[step] * 2]
    assert (batch["input_ids"][0, -tokens:] == processor.image_token_id).all()
    assert (batch["input_ids"] == processor.image_token_id).sum() == tokens
    assert (
        batch["attention_mask"][:, -tokens:].sum() == 0
        and (batch["labels"][:, -tokens:] == IGNORE_INDEX).all()
    )
    text_alone = {k: batch[k][:, :-tokens] for k in ("input_ids", "labels", "attention_mask")}
    loss = model(**batch).loss
    torch.testing.assert_close(loss, model(**text_alone).loss)
    loss.backward()  # the projector took part (zero gradient): DDP / ZeRO-3 ranks stay in step
    assert model.model.multi_modal_projector.linear_1.weight.grad is not None
    model.zero_grad()


def test_modality_grouping_gives_single_modality_batches():
    lengths = [5, -3, 7, 9, -2, -8, 4, 6, -1, 3, -5, 2, 8]
    sampler = ModalityLengthGroupedSampler(2, 2, lengths, generator=torch.Generator().manual_seed(0))
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    full = order[: len(order) - len(order) % 4][:-4]  # the last, mixed megabatch holds the leftovers
    for start in range(0, len(full), 4):
        assert len({lengths[i] > 0 for i in full[start : start + 4]}) == 1
