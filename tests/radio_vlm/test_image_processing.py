"""RadioImageProcessor: sizes over many aspect ratios, padding, packing, bad input, save/load."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import RadioConfig, RadioModel
from transformers.image_utils import OPENAI_CLIP_MEAN

from radio_vlm.models.image_processing_radio import RadioImageProcessor, patchify

# (width, height) in px: photos, both orientations, extremes.
ASPECTS = [
    (640, 480), (480, 640), (512, 512), (17, 4000), (4000, 17), (1, 1), (1, 3000), (3000, 1), (433, 100),
    (800, 533), (1920, 1080), (1080, 1920), (300, 451), (451, 300), (99, 101), (2048, 2047), (10, 10000),
]  # fmt: skip


def test_pinned_example_640x480():
    processor = RadioImageProcessor(long_edge=432, patch_size=16)
    out = processor(images=[PIL.Image.new("RGB", (640, 480))], return_tensors="pt")
    assert processor.get_output_size(480, 640) == ((324, 432), (336, 432))
    assert out["pixel_values"].shape == (1, 3, 336, 432)
    assert out["image_grid_hw"].tolist() == [[21, 27]]
    assert out["image_sizes"].tolist() == [[324, 432]]
    assert processor.num_image_tokens(480, 640) == 567


@pytest.mark.parametrize(("long_edge", "step"), [(432, 16), (432, 32), (440, 16), (64, 16), (2048, 16)])
@pytest.mark.parametrize(("width", "height"), ASPECTS)
def test_long_edge_sizes(width, height, long_edge, step):
    processor = RadioImageProcessor(long_edge=long_edge, patch_size=16, min_resolution_step=step)
    (rh, rw), (ph, pw) = processor.get_output_size(height, width)
    assert max(rh, rw) == long_edge and min(rh, rw) >= 1
    short, long = min(width, height), max(width, height)
    assert (
        min(rh, rw) == max(1, round(short * long_edge / long + 1e-9)) or short * long_edge / long % 1 == 0.5
    )
    assert (rh >= rw or height < width) and (rw >= rh or width < height)  # orientation kept
    for resized, padded in ((rh, ph), (rw, pw)):
        assert padded % step == 0 and resized <= padded < resized + step


@pytest.mark.parametrize(("width", "height"), ASPECTS[:6])
def test_long_edge_pixels_and_padding_colour(width, height):
    processor = RadioImageProcessor(long_edge=64, patch_size=16)
    image = np.full((height, width, 3), 255, np.uint8)
    out = processor(image)
    (rh, rw), (ph, pw) = processor.get_output_size(height, width)
    pixels = out["pixel_values"][0]
    assert pixels.shape == (3, ph, pw)
    torch.testing.assert_close(pixels[:, :rh, :rw], torch.ones(3, rh, rw))
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    torch.testing.assert_close(pixels[:, rh:, :], mean.expand(3, ph - rh, pw))
    torch.testing.assert_close(pixels[:, :, rw:], mean.expand(3, ph, pw - rw))


def test_resize_is_antialiased_bicubic_and_in_unit_range():
    checker = (np.indices((400, 600)).sum(0) % 2 * 255).astype(np.uint8)  # 1-px checkerboard
    pixels = RadioImageProcessor(long_edge=60)(checker)["pixel_values"]
    assert pixels.shape == (1, 3, 48, 64)
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert abs(pixels[0, :, :40, :60].mean().item() - 0.5) < 0.02  # aliasing would give stripes, not grey
    assert pixels[0, :, :40, :60].std().item() < 0.05


@pytest.mark.parametrize(
    ("size_hw", "expected"),
    [
        ((437, 641), (432, 640)),  # official example (radio_official.md 1.5)
        ((24, 40), (32, 32)),  # 1.5 -> 2 and 2.5 -> 2: Python round, half to even
        ((3, 5000), "max_resolution"),
        ((5, 7), (16, 16)),  # at least one step
    ],
)
def test_nearest_supported(size_hw, expected):
    processor = RadioImageProcessor(resize_mode="nearest_supported", patch_size=16)
    h, w = size_hw
    if isinstance(expected, str):
        with pytest.raises(ValueError, match="resize_mode='long_edge'"):
            processor(np.zeros((h, w, 3), np.uint8))
        return
    assert processor.get_output_size(h, w) == (expected, expected)
    out = processor(np.zeros((h, w, 3), np.uint8))
    assert out["pixel_values"].shape == (1, 3, *expected)
    assert out["image_sizes"].tolist() == [list(expected)]


def test_nearest_supported_many_sizes():
    processor = RadioImageProcessor(resize_mode="nearest_supported", patch_size=16, min_resolution_step=32)
    for side in range(1, 700, 7):
        (h, w), _ = processor.get_output_size(side, side + 3)
        assert h == max(32, 32 * round(side / 32)) and w == max(32, 32 * round((side + 3) / 32))


def test_square_mode():
    processor = RadioImageProcessor(resize_mode="square", long_edge=40, patch_size=16)
    for width, height in ASPECTS[:5]:
        assert processor.get_output_size(height, width) == ((40, 40), (48, 48))


def test_batches_dense_packed_and_padded():
    processor = RadioImageProcessor(long_edge=64, patch_size=16)
    wide, tall = np.zeros((30, 60, 3), np.uint8), np.zeros((60, 30, 3), np.uint8)
    dense = processor([wide, wide])
    assert dense["pixel_values"].shape == (2, 3, 32, 64)
    packed = processor([wide, tall])
    assert packed["pixel_values"].shape == (2 * 2 * 4, 3 * 16 * 16)
    assert packed["image_grid_hw"].tolist() == [[2, 4], [4, 2]]
    assert packed["image_sizes"].tolist() == [[32, 64], [64, 32]]
    forced = processor([wide, wide], pack=True)
    assert forced["pixel_values"].shape == (16, 768)
    padded = processor([wide, tall], pack=False)
    assert padded["pixel_values"].shape == (2, 3, 64, 64)
    assert padded["image_grid_hw"].tolist() == [[4, 4], [4, 4]]
    assert padded["image_sizes"].tolist() == [[32, 64], [64, 32]]
    assert isinstance(processor([wide, tall], return_tensors="np")["pixel_values"], np.ndarray)
    batch = processor(torch.rand(3, 3, 20, 40))  # a 4-D tensor is a batch
    assert batch["pixel_values"].shape == (3, 3, 32, 64)


def test_patchify_matches_transformers_layout():
    config = RadioConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         patch_size=16, max_img_size=128)  # fmt: skip
    image = torch.rand(3, 48, 32)
    reference = RadioModel(config).embeddings._image_to_patches(image[None])[0]
    torch.testing.assert_close(patchify(image, 16), reference, rtol=0, atol=0)


def test_packed_forward_equals_per_image():
    """Processor packing + transformers' RadioModel packed forward == each image alone, dense."""
    config = RadioConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         patch_size=16, max_img_size=128, num_cls_tokens=2, num_registers=2, summary_idxs=[0, 1])  # fmt: skip
    model = RadioModel(config).eval()
    processor = RadioImageProcessor(long_edge=64, patch_size=16, max_resolution=128)
    images = [torch.rand(3, 50, 80), torch.rand(3, 90, 40), torch.rand(3, 64, 64)]
    packed = processor(images)
    with torch.no_grad():
        out = model(packed["pixel_values"], image_grid_hw=packed["image_grid_hw"])
        tokens = packed["image_grid_hw"].prod(-1).tolist()
        for index, (image, features) in enumerate(zip(images, out.features.split(tokens))):
            alone = model(processor(image)["pixel_values"])
            torch.testing.assert_close(out.summary[index], alone.summary[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(features, alone.features[0], atol=1e-5, rtol=1e-5)


def test_from_model_config_and_round_trip(tmp_path):
    from radio_vlm.models.configuration_radio_with_adaptors import RadioWithAdaptorsConfig

    config = RadioWithAdaptorsConfig(
        backbone_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                         "patch_size": 16, "max_img_size": 256, "norm_mean": [0.5, 0.25, 0.125]},
        preferred_resolution=[96, 128], vitdet_window_size=2,
    )  # fmt: skip
    processor = RadioImageProcessor.from_model_config(config)
    assert (processor.patch_size, processor.min_resolution_step, processor.max_resolution) == (16, 32, 256)
    assert processor.long_edge == 128 and processor.pad_value == (0.5, 0.25, 0.125)
    processor.save_pretrained(tmp_path)
    loaded = RadioImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    image = np.random.default_rng(0).integers(0, 255, (70, 50, 3), dtype=np.uint8)
    torch.testing.assert_close(loaded(image)["pixel_values"], processor(image)["pixel_values"])
    assert RadioImageProcessor.from_pretrained(tmp_path, long_edge=64).long_edge == 64
    config.preferred_resolution = None  # then 432 px, capped at the model's max resolution
    assert RadioImageProcessor.from_model_config(config).long_edge == 256


@pytest.mark.parametrize("mode", ["long_edge", "nearest_supported", "square"])
@pytest.mark.parametrize("kind", ["path", "pil", "numpy", "torch"])
def test_zero_size_image_named_by_index(tmp_path, mode, kind):
    good = np.zeros((20, 20, 3), np.uint8)
    bad = {
        "path": tmp_path / "empty.png",
        "pil": PIL.Image.new("RGB", (0, 5)),
        "numpy": np.zeros((5, 0, 3), np.uint8),
        "torch": torch.zeros(3, 0, 5),
    }[kind]
    if kind == "path":
        bad.write_bytes(b"")
    processor = RadioImageProcessor(resize_mode=mode, long_edge=32)
    with pytest.raises(ValueError, match=r"image 1\b.*(zero size|empty)") as info:
        processor([good, bad])
    if kind == "path":
        assert "empty.png" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "call", "message"),
    [
        ({"resize_mode": "crop"}, None, "not one of"),
        ({"long_edge": 4096}, None, "long_edge<=2048"),
        ({"long_edge": 0}, None, "positive"),
        ({"min_resolution_step": 24}, None, "multiple of patch_size"),
        ({}, {"images": []}, "no images"),
        ({}, {"images": {"a": 1}}, "cannot read images from dict"),
        ({}, {"images": np.zeros((4, 4, 3), np.uint8), "do_resize": True}, "unknown arguments"),
        ({}, {"images": np.zeros((4, 4, 3), np.uint8), "return_tensors": "tf"}, "return_tensors"),
        ({}, {"images": np.zeros((4, 4, 3), np.uint8), "long_edge": 5000}, "max_resolution"),
    ],
)
def test_bad_settings(kwargs, call, message):
    with pytest.raises(ValueError, match=message):
        processor = RadioImageProcessor(**kwargs)
        processor(**call)


def test_long_edge_not_a_multiple_pads_the_long_side_too():
    processor = RadioImageProcessor(long_edge=440, patch_size=16)
    assert processor.get_output_size(330, 440) == ((330, 440), (336, 448))
    assert math.prod(processor.get_output_size(330, 440)[1]) // 256 == processor.num_image_tokens(330, 440)
