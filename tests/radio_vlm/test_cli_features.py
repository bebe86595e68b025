"""`radio-vlm features | visualize | demo` on a tiny saved model; PCA pictures; processor + RadioWithAdaptors."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors import safe_open
from transformers import AutoImageProcessor, AutoModel

from radio_vlm.cli import main
from radio_vlm.models.image_processing_radio import RadioImageProcessor
from radio_vlm.tiny import build_tiny_radio
from radio_vlm.visualize import pca_picture, pca_rgb


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-radio")
    model = build_tiny_radio("tiny-radio")
    model.save_pretrained(path)
    RadioImageProcessor.from_model_config(model.config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three readable photos of different kinds and aspects, and one corrupt file."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(folder / "wide.jpg")
    PIL.Image.fromarray(rng.integers(0, 255, (90, 40), dtype=np.uint8)).save(folder / "tall_gray.png")
    PIL.Image.fromarray(rng.integers(0, 255, (64, 64, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return [folder / "wide.jpg", folder / "tall_gray.png", folder / "broken.jpg", folder / "rgba.png"]


def _alone(model, processor, path, adaptor=None):
    """Reference: the image processed and run on its own, dense (no packing)."""
    inputs = processor(str(path))
    with torch.no_grad():
        out = model(inputs["pixel_values"])
    return out if adaptor is None else out.adaptors[adaptor]


def test_auto_classes_load_the_folder(model_dir):
    processor = AutoImageProcessor.from_pretrained(model_dir)
    assert isinstance(processor, RadioImageProcessor)
    assert (processor.long_edge, processor.max_resolution, processor.patch_size) == (64, 256, 16)
    assert type(AutoModel.from_pretrained(model_dir)).__name__ == "RadioWithAdaptors"


@pytest.mark.parametrize("adaptor", [None, "sam"])
def test_features_command(model_dir, photos, tmp_path, adaptor, capsys):
    out = tmp_path / "feats.safetensors"
    argv = ["features", *map(str, photos), "--model", str(model_dir), "--out", str(out), "--batch-size", "2"]
    assert main(argv + (["--adaptor", adaptor] if adaptor else [])) == 0
    assert "broken.jpg" in capsys.readouterr().err
    model = AutoModel.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    with safe_open(out, "pt") as f:
        metadata = f.metadata()
        paths = json.loads(metadata["paths"])
        assert paths == [str(p) for p in photos if p.name != "broken.jpg"]
        assert json.loads(metadata["skipped"])[0][0] == str(photos[2])
        assert metadata["source"] == (adaptor or "backbone")
        for index, path in enumerate(paths):
            reference = _alone(model, processor, path, adaptor)
            features = f.get_tensor(f"{index}/features")
            grid = f.get_tensor(f"{index}/grid_hw").tolist()
            assert features.shape[0] == grid[0] * grid[1]
            torch.testing.assert_close(features, reference.features[0], atol=1e-5, rtol=1e-5)
            if adaptor == "sam":  # no summary head; features upsampled 2x per side
                assert f"{index}/summary" not in set(f.keys())
                assert grid == [2 * s // 16 for s in processor(path)["pixel_values"].shape[-2:]]
            else:
                torch.testing.assert_close(
                    f.get_tensor(f"{index}/summary"), reference.summary[0], atol=1e-5, rtol=1e-5
                )
        assert f.get_tensor("1/image_size").tolist() == [64, 28]  # 90x40 gray at long edge 64


def test_features_command_errors(model_dir, photos, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"no adaptor 'nope'.*clip"):
        main(
            [
                "features",
                str(photos[0]),
                "--model",
                str(model_dir),
                "--out",
                str(tmp_path / "f"),
                "--adaptor",
                "nope",
            ]
        )
    with pytest.raises(ValueError, match="no config.json"):
        main(["features", str(photos[0]), "--model", str(tmp_path), "--out", str(tmp_path / "f")])
    assert main(["features", str(photos[2]), "--model", str(model_dir), "--out", str(tmp_path / "f")]) == 1
    assert "none of the 1 images" in capsys.readouterr().err


def test_visualize_command(model_dir, photos, tmp_path):
    out = tmp_path / "pca.png"
    assert main(["visualize", str(photos[0]), "--model", str(model_dir), "--out", str(out)]) == 0
    assert PIL.Image.open(out).size == (2 * 80, 48)  # image | PCA, at the photo's own size
    assert (
        main(["visualize", str(photos[1]), "--model", str(model_dir), "--out", str(out), "--pca-only"]) == 0
    )
    assert PIL.Image.open(out).size == (28, 64)  # the resized, un-padded image


def test_pca_rgb_separates_two_regions():
    grid = (4, 6)
    features = torch.randn(24, 16) * 0.01
    left = torch.arange(24) % 6 < 3
    features[left, 0] += 5.0  # one dominant direction: left vs right half
    colours = pca_rgb(features, grid)
    assert colours.shape == (4, 6, 3) and colours.min() >= 0 and colours.max() <= 1
    first = colours[..., 0].flatten()
    assert (first[left].mean() - first[~left].mean()).abs() > 0.9
    torch.testing.assert_close(pca_rgb(features, grid), colours)  # deterministic (signs fixed)
    with pytest.raises(ValueError, match="grid 3x6"):
        pca_rgb(features, (3, 6))


def test_pca_picture_sizes():
    features = torch.randn(12, 8)
    assert pca_picture(features, (3, 4), 16).size == (64, 48)
    assert pca_picture(features, (3, 4), 16, valid_hw=(40, 60)).size == (60, 40)
    image = PIL.Image.new("RGB", (300, 200))
    assert pca_picture(features, (3, 4), 16, (40, 60), image).size == (600, 200)


def test_packed_model_forward_equals_per_image():
    model = build_tiny_radio("tiny-radio")
    processor = RadioImageProcessor.from_model_config(model.config, long_edge=80)
    images = [torch.rand(3, 50, 90), torch.rand(3, 90, 33), torch.rand(3, 64, 64)]
    inputs = processor(images)
    with torch.no_grad():
        packed = model(**inputs)
        tokens = inputs["image_grid_hw"].prod(-1)
        for index, image in enumerate(images):
            alone = model(processor(image)["pixel_values"])
            torch.testing.assert_close(packed.summary[index], alone.summary[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                packed.features.split(tokens.tolist())[index], alone.features[0], atol=1e-5, rtol=1e-5
            )
            for name, head in packed.adaptors.items():
                u2 = model.config.adaptors[name]["feature"]["upsample_factor"] ** 2
                feats = head.features.split((tokens * u2).tolist())[index]
                torch.testing.assert_close(feats, alone.adaptors[name].features[0], atol=1e-5, rtol=1e-5)
                if head.summary is not None:
                    torch.testing.assert_close(
                        head.summary[index], alone.adaptors[name].summary[0], atol=1e-5, rtol=1e-5
                    )


def test_dense_batch_through_model_kwargs():
    """`model(**processor(same-size images))`: the dense batch's image_grid_hw must not make it packed."""
    model = build_tiny_radio("tiny-radio")
    processor = RadioImageProcessor.from_model_config(model.config)
    inputs = processor([torch.rand(3, 64, 48), torch.rand(3, 64, 48)])
    assert inputs["pixel_values"].ndim == 4
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).features, model(inputs["pixel_values"]).features)


def test_features_dtype_and_device_flags(model_dir, photos, tmp_path, monkeypatch):
    from radio_vlm import features

    out = {}
    for dtype in ("fp32", "bf16"):
        out[dtype] = tmp_path / f"{dtype}.safetensors"
        argv = [
            "features",
            str(photos[0]),
            "--model",
            str(model_dir),
            "--out",
            str(out[dtype]),
            "--dtype",
            dtype,
        ]
        assert main(argv + ["--device", "cpu"]) == 0
    with safe_open(out["fp32"], "pt") as full, safe_open(out["bf16"], "pt") as half:
        assert (half.metadata()["dtype"], half.metadata()["device"]) == ("bf16", "cpu")
        reference, lowered = full.get_tensor("0/features"), half.get_tensor("0/features")
        assert lowered.dtype == torch.float32  # saved as float32 whatever the model ran in
        assert 0 < (lowered - reference).abs().max() < 0.05 * reference.abs().max()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert features.default_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert features.default_device() == "cpu"
    assert main(["visualize", str(photos[0]), "--model", str(model_dir), "--out", str(tmp_path / "v.png"),
                 "--dtype", "bf16"]) == 0  # fmt: skip
