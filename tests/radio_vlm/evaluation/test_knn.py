"""k-NN: hand-computed votes, chunked search against a full sort, the whole command against a slow per-image
reference, the official resize rule, packing, the embedding cache, bad input, and 2 ranks == 1 process."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from radio_vlm.cli import main
from radio_vlm.evaluation.common import load_model
from radio_vlm.evaluation.datasets import ClassifyTransform, ImageFolder
from radio_vlm.evaluation.embed import summary_of
from radio_vlm.evaluation.knn import knn_correct, knn_search, knn_votes
from radio_vlm.models.image_io import load_image


def test_votes_weigh_each_neighbour_by_exp_of_similarity_over_temperature():
    # nearest neighbour is class 1, the next two are class 0
    sims, labels = torch.tensor([[0.90, 0.89, 0.88]]), torch.tensor([[1, 0, 0]])
    votes = knn_votes(sims, labels, num_classes=3, temperature=0.07)
    by_hand = [math.exp(0.89 / 0.07) + math.exp(0.88 / 0.07), math.exp(0.90 / 0.07), 0.0]
    torch.testing.assert_close(
        votes[0].double(), torch.tensor(by_hand, dtype=torch.float64), rtol=1e-5, atol=0
    )
    top1, top5 = knn_correct(votes, torch.tensor([0]), 3)
    assert top1.item() and top5.item()  # at T = 0.07 the two class-0 neighbours outvote the closer one
    sharp = knn_votes(sims, labels, num_classes=3, temperature=0.01)
    assert sharp.argmax().item() == 1  # e^90 > e^89 + e^88: a low temperature trusts the nearest


def test_ties_go_to_the_first_class_as_the_official_argmax():
    votes = knn_votes(torch.tensor([[0.5, 0.5]]), torch.tensor([[2, 1]]), num_classes=3)
    assert knn_correct(votes, torch.tensor([1]), 3)[0].item()


def test_chunked_search_equals_a_full_sort():
    generator = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(37, 16, generator=generator), dim=1)
    database = F.normalize(torch.randn(1000, 16, generator=generator), dim=1)
    sims, idx = knn_search(queries, database, k=7, query_chunk=5, db_chunk=64)
    full = queries @ database.T
    order = full.argsort(dim=1, descending=True)[:, :7]
    assert torch.equal(idx, order)
    torch.testing.assert_close(sims, full.gather(1, order))
    with pytest.raises(ValueError, match="k=1001 but the database has 1000 images"):
        knn_search(queries, database, k=1001)


def test_resize_rules_follow_the_official_transform():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (72, 112, 3), np.uint8))
    short = ClassifyTransform((64,), 16, (0.5, 0.5, 0.5))(image)
    assert short.shape == (3, 64, 96)  # 72 -> 64, 112 * 64 / 72 = 99.6 -> nearest multiple of 16: 96
    crop = ClassifyTransform((64, 64), 16, (0.5, 0.5, 0.5))(image)
    resized = np.asarray(image.resize((96, 64), Image.BICUBIC), dtype=np.float32) / 255.0
    torch.testing.assert_close(crop, torch.from_numpy(resized[:, 16:80]).permute(2, 0, 1))
    with pytest.raises(ValueError, match="multiples of 16 px; pass 64 64"):
        ClassifyTransform((60, 60), 16, (0.5, 0.5, 0.5))


def test_packed_batches_give_each_image_its_own_summary(tiny_model):
    model = load_model(tiny_model, torch.device("cpu"))
    images = [
        torch.rand(3, h, w, generator=torch.Generator().manual_seed(h + w))
        for h, w in ((64, 96), (32, 48), (64, 64))
    ]
    packed = summary_of(model, images, "clip")
    with torch.no_grad():
        alone = torch.cat([model(image[None]).adaptors["clip"].summary for image in images])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def _slow_knn(model, train: ImageFolder, val: ImageFolder, k: int) -> float:
    """One image at a time, every similarity sorted, votes summed in a Python dict."""
    transform = ClassifyTransform((64, 64), 16, (0.5, 0.5, 0.5))

    def embed(path):
        with torch.no_grad():
            return F.normalize(model(transform(load_image(path))[None]).summary, dim=1)[0]

    database = [(embed(p), label) for p, label in train.samples]
    correct = 0
    for path, label in val.samples:
        query = embed(path)
        neighbours = sorted(((float(query @ e), lab) for e, lab in database), reverse=True)[:k]
        votes = {}
        for sim, lab in neighbours:
            votes[lab] = votes.get(lab, 0.0) + math.exp(sim / 0.07)
        correct += max(sorted(votes), key=lambda c: votes[c]) == label
    return 100.0 * correct / len(val)


def test_knn_command_matches_a_slow_reference_and_reuses_its_cache(vision_data, tiny_model, tmp_path, capsys):
    bad = vision_data / "classify" / "val" / "circle" / "zz_corrupt.png"
    bad.write_bytes(b"not a png")
    try:
        argv = ["eval", "knn", "--model", str(tiny_model), "--train", str(vision_data / "classify" / "train"),
                "--val", str(vision_data / "classify" / "val"), "--out", str(tmp_path), "--workers", "0",
                "--batch-size", "7"]  # fmt: skip
        assert main([*argv, "--k", "5"]) == 0
        record = json.loads((tmp_path / "metrics.json").read_text())
        model = load_model(tiny_model, torch.device("cpu"))
        train = ImageFolder.scan(vision_data / "classify" / "train")
        val = ImageFolder.scan(vision_data / "classify" / "val")
        val = ImageFolder(val.root, val.classes, tuple(s for s in val.samples if s[0] != str(bad)))
        assert record["metrics"]["top1"] == pytest.approx(_slow_knn(model, train, val, 5), abs=1e-9)
        assert record["skipped_images"]["count"] == 1 and record["skipped_images"]["files"][0][0] == str(bad)
        assert record["metrics"]["num_val"] == len(val) and record["settings"]["resolution"] == [64, 64]
        capsys.readouterr()
        assert main([*argv, "--k", "3"]) == 0  # another k: the embeddings come from the cache
        out = capsys.readouterr().out
        assert out.count("embeddings from the cache") == 2 and "img/s" not in out
        assert json.loads((tmp_path / "metrics.json").read_text())["settings"]["k"] == 3
    finally:
        bad.unlink()


def test_bad_image_folders_are_one_clear_error(tmp_path, tiny_model):
    for name in ("a", "b"):
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / "train" / name / "x.png")
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(ValueError, match="class folder 'empty' has no images"):
        ImageFolder.scan(tmp_path / "train")
    (tmp_path / "train" / "empty").rmdir()
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "val" / "a" / "y.png")
    argv = ["eval", "knn", "--model", str(tiny_model), "--train", str(tmp_path / "train"), "--val",
            str(tmp_path / "val"), "--out", str(tmp_path / "run")]  # fmt: skip
    with pytest.raises(ValueError, match=r"different classes \(only in train: \['b'\]"):
        main(argv)


@pytest.mark.slow
def test_two_ranks_give_the_single_process_metrics(
    vision_data, tiny_model, tmp_path, subprocess_env, free_port
):
    common = ["eval", "knn", "--model", str(tiny_model), "--train", str(vision_data / "classify" / "train"),
              "--val", str(vision_data / "classify" / "val"), "--k", "5", "--workers", "0", "--no-cache"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    subprocess.run(
        [*torchrun, "-m", "radio_vlm.cli", *common, "--out", str(tmp_path / "two")],
        env=subprocess_env,
        check=True,
    )
    one, two = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    assert two["world_size"] == 2
    for key in ("top1", "top5", "num_train", "num_val"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key])
    assert two["metrics"]["per_class_top1"] == pytest.approx(one["metrics"]["per_class_top1"])
