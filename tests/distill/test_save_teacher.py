"""`radio-distill save-teacher`: a tiny twin written in its library's format is the very teacher distillation ran,
and `radio-vlm eval` reads it (open_clip text tower, SAM prompt encoder and mask decoder)."""

from __future__ import annotations

import pytest
import torch

from distill.cli import main
from distill.teachers import get_teacher_spec, load_teacher
from radio_vlm.evaluation.sam import load_sam
from radio_vlm.evaluation.zero_shot import load_text_tower


def test_saved_twins_are_the_distillation_teachers(tmp_path):
    assert main(["save-teacher", "tiny_clip", "tiny_sam", "--out", str(tmp_path)]) == 0
    clip_spec, sam_spec = get_teacher_spec("tiny_clip"), get_teacher_spec("tiny_sam")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tower = load_text_tower(tmp_path / "tiny_clip")
    torch.testing.assert_close(
        tower.encode_pixels(images), torch.nn.functional.normalize(load_teacher(clip_spec)(images).summary)
    )
    assert tower.encode_text(["a photo of a circle."]).shape == (1, clip_spec.summary_dim)

    sam, encoder = load_sam(tmp_path / "tiny_sam")
    assert encoder["img_size"] == sam_spec.resolution
    pixels = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    sam.image_encoder.neck = torch.nn.Identity()  # the teacher runs the encoder before the neck
    with torch.no_grad():
        features = sam.image_encoder(pixels).permute(0, 2, 3, 1)
    torch.testing.assert_close(features, load_teacher(sam_spec)(pixels).features)


def test_a_teacher_with_weights_on_disk_is_not_rewritten(tmp_path):
    with pytest.raises(
        ValueError, match=r"sam_vith' is a real teacher: pass its checkpoint .* to radio-vlm eval directly"
    ):
        main(["save-teacher", "sam_vith", "--out", str(tmp_path)])
