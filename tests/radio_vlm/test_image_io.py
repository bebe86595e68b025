"""radio_vlm.models.image_io: every image kind becomes RGB; every bad input names the image and the problem."""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import pytest
import torch

from radio_vlm.models.image_io import load_image, load_image_tensor


def _gradient(height=6, width=10) -> np.ndarray:
    """(H, W, 3) uint8 with distinct values per pixel and channel."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 20, y * 30, x * 5 + y * 7], axis=-1).astype(np.uint8)


def test_rgb_sources_agree():
    rgb = _gradient()
    expected = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    for source in (
        PIL.Image.fromarray(rgb),
        rgb,
        rgb.astype(np.float32) / 255,
        torch.from_numpy(rgb).permute(2, 0, 1),  # uint8 CHW
        expected.clone(),  # float CHW
    ):
        out = load_image_tensor(source)
        assert out.shape == (3, 6, 10) and out.dtype == torch.float32
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
        assert np.array_equal(np.asarray(load_image(source)), rgb)


def test_float_inputs_keep_precision():
    x = torch.full((3, 4, 4), 0.1234567)
    assert load_image_tensor(x)[0, 0, 0].item() == pytest.approx(0.1234567, abs=1e-7)


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"])
def test_colour_modes_become_rgb(mode):
    image = PIL.Image.fromarray(_gradient()).convert(mode)
    out = load_image(image)
    assert out.mode == "RGB" and out.size == (10, 6)
    if mode == "L":
        grey = np.asarray(image)
        assert np.array_equal(np.asarray(out), np.repeat(grey[:, :, None], 3, axis=2))


def test_transparency_composited_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # transparent -> white
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    for source in (PIL.Image.fromarray(rgba, "RGBA"), rgba):
        out = np.asarray(load_image(source)).astype(int)
        assert out[0, 0].tolist() == [255, 0, 0]
        assert out[0, 1].tolist() == [255, 255, 255]
        assert abs(out[1, 0, 0] - 127) <= 1
    la = PIL.Image.fromarray(rgba[:, :, [0, 3]], "LA")
    assert np.asarray(load_image(la))[0, 1].tolist() == [255, 255, 255]
    palette = PIL.Image.fromarray(rgba, "RGBA").convert("P")
    palette.info["transparency"] = palette.getpixel((1, 0))
    assert load_image(palette).mode == "RGB"


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], np.uint16)
    path = tmp_path / "deep.png"
    PIL.Image.fromarray(values).save(path)
    assert PIL.Image.open(path).mode.startswith("I")
    for source in (path, values):
        out = np.asarray(load_image(source))
        assert out[0, :, 0].tolist() == [0, 100, 255]


def test_exif_orientation_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    PIL.Image.fromarray(_gradient(6, 10)).save(path, exif=exif)
    assert load_image(path).size == (6, 10)
    assert load_image(PIL.Image.open(path)).size == (6, 10)
    assert load_image_tensor(path).shape == (3, 10, 6)


def test_files_cmyk_jpeg(tmp_path):
    path = tmp_path / "print.jpg"
    PIL.Image.fromarray(_gradient()).convert("CMYK").save(path)
    assert load_image(path).mode == "RGB"


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.png", "file not found"),
        (lambda d: d, "not a file"),
        (lambda d: _write(d / "empty.jpg", b""), "empty"),
        (lambda d: _write(d / "text.png", b"not an image"), "not an image format"),
    ],
)
def test_bad_files_name_the_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=message) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.png"
    PIL.Image.fromarray(_gradient(64, 64)).save(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_image(path)


def test_encoded_bytes_and_file_objects(tmp_path):
    """Bytes (a tar member) and open files decode as the file does; bad data names the given image."""
    path = tmp_path / "rotated.jpg"
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    PIL.Image.fromarray(_gradient(6, 10)).save(path, exif=exif)
    expected = load_image_tensor(path)
    with open(path, "rb") as file:
        torch.testing.assert_close(load_image_tensor(file), expected, atol=0, rtol=0)
    torch.testing.assert_close(load_image_tensor(io.BytesIO(path.read_bytes())), expected, atol=0, rtol=0)
    torch.testing.assert_close(load_image_tensor(path.read_bytes()), expected, atol=0, rtol=0)
    assert np.array_equal(np.asarray(load_image(path.read_bytes())), np.asarray(load_image(path)))

    for data, message in [
        (b"", "empty"),
        (b"\xff\xd8corrupt", "corrupt"),
        (b"not an image", "not an image format"),
        (path.read_bytes()[:200], "corrupt or truncated"),
    ]:
        with pytest.raises(ValueError, match=message) as info:
            load_image(data, name="shard-0.tar:7.jpg")
        assert "shard-0.tar:7.jpg" in str(info.value)
    text = _write(tmp_path / "text.png", b"not an image")
    with open(text, "rb") as file, pytest.raises(ValueError, match="not an image format") as info:
        load_image(file)
    assert f"image file {text}" in str(info.value)  # an open file names itself


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (np.zeros((0, 5, 3), np.uint8), "zero size"),
        (torch.zeros(3, 5, 0), "zero size"),
        (PIL.Image.new("RGB", (0, 4)), "zero size"),
        (np.full((4, 4, 3), 200.0, np.float32), "divide by 255"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.zeros((4, 4, 3), np.int64), "pixel type int64"),
        (torch.zeros(8, 8, 3), "channels-last"),
        (np.zeros((3, 8, 9), np.uint8), "channels-first"),
        (np.zeros((8, 8, 5), np.uint8), "1-4 channels"),
        (np.zeros((2, 3, 4, 4), np.uint8), "one at a time"),
        (12, "cannot read an image from int"),
    ],
)
def test_bad_arrays_name_the_image(source, message):
    with pytest.raises(ValueError, match=message) as info:
        load_image_tensor(source, name="image 7")
    assert "image 7" in str(info.value)
