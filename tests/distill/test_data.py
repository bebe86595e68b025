"""Distillation data: reproducible views, per-teacher resizing/normalisation, skipped images, WebDataset shards
(split by rank, resumed without decoding what was already read)."""

import io

import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader

from distill.data import (
    SHARD_STRIDE,
    DistillDataset,
    DistillView,
    ImageFolderSource,
    SkimageSource,
    SyntheticSource,
    WebDatasetStream,
    collate_distill,
)
from distill.index import build_index
from distill.teachers import get_teacher_spec

TEACHERS = [get_teacher_spec(n) for n in ("tiny_clip", "tiny_dinov2", "tiny_sam")]


def _view(**kwargs) -> DistillView:
    return DistillView(64, TEACHERS, **kwargs)


def _png_bytes(seed: int, size=(40, 30)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_views_are_reproducible_per_seed_epoch_index():
    first = DistillDataset(SyntheticSource(16, seed=3), _view(), seed=7)
    second = DistillDataset(SyntheticSource(16, seed=3), _view(), seed=7)
    a, b = first[5], second[(0, 5)]
    assert torch.equal(a.student_image, b.student_image)
    assert all(torch.equal(a.teacher_images[k], b.teacher_images[k]) for k in a.teacher_images)
    first.set_epoch(1)
    assert not torch.equal(first[5].student_image, a.student_image)  # a new crop each epoch
    assert torch.equal(first[5].student_image, second[(1, 5)].student_image)
    assert not torch.equal(
        DistillDataset(SyntheticSource(16, seed=3), _view(), seed=8)[5].student_image, a.student_image
    )


def test_one_view_resized_and_normalised_for_each_teacher():
    sample = DistillDataset(SyntheticSource(4), _view(), seed=0)[2]
    assert sample.student_image.shape == (3, 64, 64)
    assert sample.student_image.min() >= 0.0 and sample.student_image.max() <= 1.0
    for spec in TEACHERS:
        image = sample.teacher_images[spec.name]
        assert image.shape == (3, spec.resolution, spec.resolution)
        pixels = image * torch.tensor(spec.std).view(3, 1, 1) + torch.tensor(spec.mean).view(3, 1, 1)
        if spec.resolution == 64:  # same crop, same size: exactly the student's pixels
            torch.testing.assert_close(pixels, sample.student_image, atol=1e-5, rtol=0)
        else:  # same crop at another size: close to the student's after resizing back
            back = torch.nn.functional.interpolate(pixels[None], size=64, mode="bilinear", antialias=True)[0]
            assert (back - sample.student_image).abs().mean() < 0.05


def test_full_scale_view_of_a_square_image_is_the_whole_image():
    image = PIL.Image.open(io.BytesIO(_png_bytes(0, size=(50, 50)))).convert("RGB")
    student, _ = _view(min_scale=1.0)(image, np.random.default_rng(0))
    expected = np.asarray(image.resize((64, 64), PIL.Image.BICUBIC), dtype=np.float32) / 255.0
    torch.testing.assert_close(student, torch.from_numpy(expected).permute(2, 0, 1))


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "1.png").write_bytes(_png_bytes(1))
    (tmp_path / "a" / "2_garbage.jpg").write_bytes(b"not an image at all")
    (tmp_path / "a" / "3_truncated.png").write_bytes(_png_bytes(3)[:60])
    (tmp_path / "a" / "b" / "4.png").write_bytes(_png_bytes(4))
    (tmp_path / "a" / "b" / "5_empty.webp").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image file, ignored")
    (tmp_path / "a" / "9_missing.png").write_bytes(_png_bytes(9))
    source = ImageFolderSource(tmp_path, build_index(tmp_path / "index", tmp_path))
    (tmp_path / "a" / "9_missing.png").unlink()  # removed after indexing: skipped like a corrupt file
    assert [p.rsplit("/", 1)[-1] for p in source.paths] == [
        "1.png",
        "2_garbage.jpg",
        "3_truncated.png",
        "9_missing.png",
        "4.png",
        "5_empty.webp",
    ]
    dataset = DistillDataset(source, _view(), seed=0)
    loader = DataLoader(dataset, batch_size=6, collate_fn=collate_distill, num_workers=1)
    batch = next(iter(loader))
    assert batch.student_images.shape == (6, 3, 64, 64)
    # index 1 -> 3 skipped (garbage, truncated, missing) -> 4.png; index 2 -> 2; index 3 -> 1;
    # index 5 -> 1 skipped (wraps to 1.png)
    assert batch.num_skipped == 3 + 2 + 1 + 1
    assert torch.equal(batch.sample_ids, torch.arange(6))


def test_skimage_photos_load_as_rgb():
    source = SkimageSource(names=("camera", "coffee"))  # a grayscale and a colour photo
    assert len(source) == 2 and all(source.load(i).mode == "RGB" for i in range(2))
    assert len(SkimageSource()) >= 15
    with pytest.raises(ValueError, match="has no images"):
        SkimageSource(names=("nope",))


@pytest.fixture
def shards(tmp_path):
    import webdataset as wds

    urls = []
    for shard in range(4):
        url = str(tmp_path / f"shard-{shard:06d}.tar")
        with wds.TarWriter(url) as sink:
            for i in range(6):
                record = {"__key__": f"{shard:03d}{i:04d}", "txt": f"caption {i}"}
                if shard == 1 and i == 2:
                    record["jpg"] = b"\xff\xd8corrupt"
                elif not (shard == 2 and i == 4):  # a record without an image
                    record["png"] = _png_bytes(shard * 10 + i)
                sink.write(record)
        urls.append(url)
    return urls


def _ids(batches):
    return [b.sample_ids.tolist() for b in batches]


def test_webdataset_shards_split_by_rank_skip_corrupt_and_resume(shards):
    full = list(WebDatasetStream(shards, _view(), batch_size=2, seed=1))
    assert all(
        b.student_images.shape == (2, 3, 64, 64) and b.teacher_images["tiny_sam"].shape[-1] == 128
        for b in full
    )
    assert sum(b.num_skipped for b in full) == 2  # the corrupt jpg and the record without an image
    ids = [i for b in full for i in b.sample_ids.tolist()]
    assert len(ids) == len(set(ids)) == 22 and {i // SHARD_STRIDE for i in ids} == {0, 1, 2, 3}

    ranks = [list(WebDatasetStream(shards, _view(), 2, seed=1, rank=r, world_size=2)) for r in range(2)]
    rank_ids = [{i for b in batches for i in b.sample_ids.tolist()} for batches in ranks]
    assert not rank_ids[0] & rank_ids[1] and rank_ids[0] | rank_ids[1] <= set(ids)

    again = list(WebDatasetStream(shards, _view(), 2, seed=1))
    assert _ids(again) == _ids(full) and torch.equal(again[3].student_images, full[3].student_images)
    resumed = WebDatasetStream(shards, _view(), 2, seed=1)
    role, done, read = full[3].stream_state
    resumed.set_position({role: (done, read)}, next_role=0)
    assert _ids(resumed) == _ids(full)[4:]
    other_epoch = WebDatasetStream(shards, _view(), 2, seed=1)
    other_epoch.set_epoch(1)
    assert _ids(other_epoch) != _ids(full)  # shards reshuffled per epoch


def test_webdataset_resume_decodes_only_what_it_yields(shards, monkeypatch):
    import distill.data

    decoded = []

    def counting(data, name=None):
        decoded.append(name)
        return load_image(data, name=name)

    load_image = distill.data.load_image
    monkeypatch.setattr(distill.data, "load_image", counting)
    full = list(WebDatasetStream(shards, _view(), batch_size=2, seed=1))
    decoded_in_full = list(decoded)
    stop = 6  # batches already taken before the "kill"
    stream = WebDatasetStream(shards, _view(), batch_size=2, seed=1)
    decoded.clear()
    for batch in stream:  # the original run up to the kill: how many images it decoded
        if batch.sample_ids.tolist() == full[stop - 1].sample_ids.tolist():
            break
    before_kill = len(decoded)
    decoded.clear()
    resumed = WebDatasetStream(shards, _view(), batch_size=2, seed=1)
    role, done, read = full[stop - 1].stream_state
    resumed.set_position({role: (done, read)}, next_role=0)
    assert _ids(resumed) == _ids(full)[stop:]
    assert decoded == decoded_in_full[before_kill:]  # nothing before the cursor is decoded again
