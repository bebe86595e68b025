"""SAM drop-in: the builder against segment_anything's own, the RADIO encoder's numerics, the protocol against
SamPredictor.predict one box at a time (EfficientViT-SAM's loop), checkpoints, and the bad-input errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools.coco import COCO

from radio_vlm.cli import main
from radio_vlm.evaluation.common import load_model
from radio_vlm.evaluation.sam import SAM_ARCHS, build_sam, load_sam, mask_iou, save_sam, student_sam
from radio_vlm.models.image_io import load_image

from .conftest import TINY_SAM


@pytest.fixture(scope="module")
def sam_folder(tmp_path_factory):
    torch.manual_seed(0)
    return save_sam(build_sam(TINY_SAM), TINY_SAM, tmp_path_factory.mktemp("sam") / "tiny_sam")


@pytest.mark.parametrize("arch", sorted(SAM_ARCHS))
def test_build_sam_is_segment_anythings_builder_at_the_released_sizes(arch):
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        ours, theirs = build_sam(SAM_ARCHS[arch]), sam_model_registry[arch]()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }


def test_checkpoints_round_trip_and_bad_ones_are_named(sam_folder, tmp_path):
    sam, encoder = load_sam(sam_folder)
    torch.manual_seed(0)
    expected = build_sam(TINY_SAM).state_dict()
    assert encoder == TINY_SAM and all(torch.equal(v, expected[k]) for k, v in sam.state_dict().items())
    torch.save(expected, tmp_path / "tiny.pth")  # an official-style file of an unofficial size
    with pytest.raises(ValueError, match="not a full SAM checkpoint of vit_h/l/b; pass --sam-arch"):
        load_sam(tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match="does not match the SAM architecture"):
        load_sam(tmp_path / "tiny.pth", "vit_b")


def test_radio_encoder_is_the_sam_neck_on_the_sam_adaptor(sam_folder, tiny_model):
    teacher, _ = load_sam(sam_folder)
    radio = load_model(tiny_model, torch.device("cpu"))
    student = student_sam(teacher, radio, "sam", resolution=64)
    pixels = torch.rand(
        1, 3, 128, 128, generator=torch.Generator().manual_seed(0)
    )  # [0, 1], SAM's input size
    normalised = (
        pixels * 255 - student.pixel_mean
    ) / student.pixel_std  # what Sam.preprocess hands the encoder
    with torch.no_grad():
        features = radio(
            F.interpolate(pixels, size=(64, 64), mode="bilinear", antialias=True), feature_fmt="NCHW"
        )
        expected = teacher.image_encoder.neck(
            features.adaptors["sam"].features
        )  # 4x4 patches x 2 = SAM's 8x8
        torch.testing.assert_close(student.image_encoder(normalised), expected, atol=1e-5, rtol=1e-4)


def _reference_miou(sam, coco_dir) -> float:
    """EfficientViT-SAM's loop: SamPredictor.predict per box, the best of three masks by predicted IoU."""
    from segment_anything import SamPredictor

    coco = COCO(str(coco_dir / "annotations" / "instances_val2017.json"))
    predictor, ious = SamPredictor(sam), []
    for image_id, info in sorted(coco.imgs.items()):
        predictor.set_image(np.asarray(load_image(coco_dir / "val2017" / info["file_name"])))
        for ann in coco.imgToAnns[image_id]:
            x, y, w, h = ann["bbox"]
            masks, scores, _ = predictor.predict(box=np.array([x, y, x + w, y + h]), multimask_output=True)
            ious.append(mask_iou(masks[scores.argmax()], coco.annToMask(ann).astype(bool)))
    return float(np.mean(ious))


def test_sam_command_matches_the_one_box_at_a_time_reference(vision_data, sam_folder, tiny_model, tmp_path):
    argv = ["eval", "sam", "--model", str(tiny_model), "--sam-checkpoint", str(sam_folder), "--coco",
            str(vision_data / "coco"), "--resolution", "64", "--agreement-with-teacher", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    teacher, _ = load_sam(sam_folder)
    radio = load_model(tiny_model, torch.device("cpu"))
    assert metrics["teacher_miou"] == pytest.approx(_reference_miou(teacher, vision_data / "coco"), abs=1e-6)
    student = student_sam(teacher, radio, "sam", resolution=64)
    assert metrics["miou"] == pytest.approx(_reference_miou(student, vision_data / "coco"), abs=1e-6)
    assert metrics["miou_small"] == pytest.approx(metrics["miou"])  # the demo's shapes are all < 32^2 px
    assert metrics["miou_large"] is None and 0 <= metrics["agreement_miou"] <= 100


def test_mask_iou_by_hand():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2], b[:2, :3] = True, True
    assert mask_iou(a, b) == pytest.approx(100 * 4 / 6)
    assert mask_iou(a & False, b & False) == 0.0 and mask_iou(a & False, b & False, empty=100.0) == 100.0


def test_bad_coco_and_mismatched_heads_are_clear_errors(vision_data, sam_folder, tmp_path):
    coco = tmp_path / "coco"
    shutil.copytree(vision_data / "coco", coco)
    first = sorted((coco / "val2017").iterdir())[0]
    first.unlink()
    from radio_vlm.tiny import build_tiny_radio

    build_tiny_radio("tiny-radio").save_pretrained(tmp_path / "model16")  # its sam head gives 16 channels
    base = [
        "eval",
        "sam",
        "--sam-checkpoint",
        str(sam_folder),
        "--coco",
        str(coco),
        "--out",
        str(tmp_path / "run"),
    ]
    with pytest.raises(
        ValueError,
        match=rf"image id {int(first.stem)} \({first.name}\) is not in .*\(1 of 8 images missing\)",
    ):
        main([*base, "--model", str(tmp_path / "model16")])
    shutil.copyfile(vision_data / "coco" / "val2017" / first.name, first)
    with pytest.raises(ValueError, match="gives 16 feature channels but the SAM checkpoint's neck takes 32"):
        main([*base, "--model", str(tmp_path / "model16")])
