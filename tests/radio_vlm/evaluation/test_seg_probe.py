"""Linear-probe segmentation: a hand-computed mIoU through torchmetrics' confusion matrix, the ADE20k / VOC label
conventions, the schedule, an exact resume after an interruption, slide windows, and a mask beyond the classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torchmetrics.classification import MulticlassConfusionMatrix

from radio_vlm.cli import main
from radio_vlm.evaluation import seg_probe
from radio_vlm.evaluation.seg_probe import IGNORE_INDEX, iou_from_confusion, probe_lr, read_label


def test_miou_of_a_hand_computed_case():
    labels = torch.tensor([[0, 0, 1], [1, 2, IGNORE_INDEX]])
    preds = torch.tensor([[0, 1, 1], [1, 1, 0]])  # the prediction at the ignored pixel does not count
    confusion = MulticlassConfusionMatrix(4, ignore_index=IGNORE_INDEX)(preds.flatten(), labels.flatten())
    scores = iou_from_confusion(confusion.double())
    # class 0: 1 hit, 2 labelled, 1 predicted -> 1/2; class 1: 2 hits, 2 labelled, 4 predicted -> 2/4;
    # class 2: 0 hits -> 0; class 3: absent from labels and predictions -> left out of the mean
    assert scores["iou"] == [50.0, 50.0, 0.0, None]
    assert scores["acc"] == [50.0, 100.0, 0.0, None]
    assert scores["miou"] == pytest.approx(100 / 3)
    assert scores["aacc"] == pytest.approx(60.0)


def test_label_conventions(tmp_path):
    path = tmp_path / "ade.png"
    Image.fromarray(np.array([[0, 1, 150], [255, 2, 3]], dtype=np.uint8)).save(path)
    assert read_label(str(path), True, 150).tolist() == [
        [255, 0, 149],
        [255, 1, 2],
    ]  # ADE20k reduce_zero_label
    with pytest.raises(
        ValueError, match=r"ade\.png: value 150 is beyond the 6 classes \(valid 1\.\.6, 0 = ignored\)"
    ):
        read_label(str(path), True, 6)
    assert read_label(str(path), False, 151).tolist() == [[0, 1, 150], [255, 2, 3]]  # VOC: 255 ignored
    with pytest.raises(
        ValueError, match=r"value 150 is beyond the 21 classes \(valid 0\.\.20, 255 = ignored\)"
    ):
        read_label(str(path), False, 21)
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="not a class-index image"):
        read_label(str(tmp_path / "rgb.png"), True, 6)


def test_warmup_then_poly_schedule():
    assert probe_lr(0, 100, 10, 1e-3) == pytest.approx(1e-9)
    assert probe_lr(5, 100, 10, 1e-3) == pytest.approx(0.5e-3, rel=1e-5)
    assert probe_lr(10, 100, 10, 1e-3) == pytest.approx(1e-3)
    assert probe_lr(55, 100, 10, 1e-3) == pytest.approx(0.5e-3)
    assert probe_lr(100, 100, 10, 1e-3) == 0.0


def _argv(vision_data, model, out, *extra):
    return ["eval", "seg-probe", "--model", str(model), "--data", str(vision_data / "segmentation"),
            "--out", str(out), "--crop-size", "32", "--batch-size", "4", "--steps", "6", "--workers", "0", *extra]  # fmt: skip


def test_probe_trains_evaluates_and_resumes_exactly(vision_data, tiny_model, tmp_path, monkeypatch):
    assert main(_argv(vision_data, tiny_model, tmp_path / "straight")) == 0
    record = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    names = (vision_data / "segmentation" / "classes.txt").read_text().split()
    assert list(record["metrics"]["per_class"]) == names and 0 <= record["metrics"]["miou"] <= 100
    assert record["settings"]["stride"] == 21  # 2/3 of the 32 px crop

    real_lr = seg_probe.probe_lr

    def interrupted(step, *args):
        if step == 4:
            raise KeyboardInterrupt  # as a kill after the step-3 checkpoint
        return real_lr(step, *args)

    monkeypatch.setattr(seg_probe, "probe_lr", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(_argv(vision_data, tiny_model, tmp_path / "resumed", "--save-every", "3"))
    monkeypatch.setattr(seg_probe, "probe_lr", real_lr)
    assert torch.load(tmp_path / "resumed" / seg_probe.CHECKPOINT, weights_only=True)["step"] == 3
    assert main(_argv(vision_data, tiny_model, tmp_path / "resumed", "--save-every", "3", "--resume")) == 0
    straight, resumed = (load_file(tmp_path / n / "probe.safetensors") for n in ("straight", "resumed"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0)


def test_slide_windows_cover_the_image_and_average_overlaps(tiny_model):
    from radio_vlm.evaluation.common import load_model
    from radio_vlm.evaluation.seg_probe import LinearProbe, ProbeJob, ProbeSettings, slide_logits

    model = load_model(tiny_model, torch.device("cpu"))
    job = ProbeJob(model, None, ProbeSettings(crop_size=32), torch.device("cpu"))
    probe = LinearProbe(32, 3).eval()
    pixels = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(0))
    logits = slide_logits(job, probe, pixels, 3)  # windows at x = 0, 21, 24 and y = 0, 8: overlaps averaged
    assert logits.shape == (3, 40, 56) and torch.isfinite(logits).all()
    with torch.no_grad():

        def window(y, x):
            features = model(pixels[None, :, y : y + 32, x : x + 32], feature_fmt="NCHW").features
            return torch.nn.functional.interpolate(
                probe(features), size=(32, 32), mode="bilinear", align_corners=False
            )[0]

        torch.testing.assert_close(logits[:, :8, :21], window(0, 0)[:, :8, :21])  # one window only
        both = (window(0, 0)[:, :8, 21:24] + window(0, 21)[:, :8, :3]) / 2  # two windows overlap here
        torch.testing.assert_close(logits[:, :8, 21:24], both)


def test_a_mask_beyond_the_classes_names_the_file(vision_data, tiny_model, tmp_path):
    data = tmp_path / "data"
    for split in ("training", "validation"):
        (data / "images" / split).mkdir(parents=True)
        (data / "annotations" / split).mkdir(parents=True)
        Image.new("RGB", (40, 32), (90, 90, 90)).save(data / "images" / split / "a.jpg")
        Image.fromarray(np.full((32, 40), 9 if split == "training" else 1, np.uint8)).save(
            data / "annotations" / split / "a.png"
        )
    (data / "classes.txt").write_text("background\nthing\n")
    argv = ["eval", "seg-probe", "--model", str(tiny_model), "--data", str(data), "--out", str(tmp_path / "run"),
            "--crop-size", "32", "--steps", "2", "--workers", "0"]  # fmt: skip
    with pytest.raises(ValueError, match=r"training/a\.png: value 9 is beyond the 2 classes"):
        main(argv)
