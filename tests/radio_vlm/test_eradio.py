"""E-RADIO: official fixture match, deploy folding, resolution rules, save/load, window adaptation."""

from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import load_file

import radio_vlm
from radio_vlm import ERadioModel, RadioWithAdaptors, RadioWithAdaptorsConfig
from radio_vlm.convert.checkpoint import find_constructor, load_constructor
from radio_vlm.convert.eradio import convert_eradio_checkpoint, eradio_config_from_constructor
from radio_vlm.tiny import tiny_eradio_config

ATOL = 1e-5  # the project's tolerance against official fixtures (official runs vary by 2.5e-6 across threads)


@pytest.fixture(scope="module")
def fixture_files(fixtures_dir):
    extra = fixtures_dir / "radio_reference_extra"
    checkpoint_path = extra / "eradio_tiny.pth.tar"
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    inputs = {
        k: v.float() / 255
        for k, v in load_file(fixtures_dir / "radio_reference" / "inputs.safetensors").items()
    }
    return checkpoint_path, checkpoint, inputs, load_file(extra / "expected_eradio_tiny.safetensors")


@pytest.fixture(scope="module")
def converted(fixture_files):
    checkpoint_path, checkpoint, _, _ = fixture_files
    return convert_eradio_checkpoint(checkpoint, load_constructor(find_constructor(checkpoint_path)))


def _model(converted) -> ERadioModel:
    config, state_dict = converted
    model = ERadioModel(config).eval()
    model.load_state_dict(state_dict, strict=True)
    return model


def _supported(inputs):
    return {k: v for k, v in inputs.items() if k != "img_48x160"}


def test_fixture_outputs_match_official(fixture_files, converted):
    _, _, inputs, expected = fixture_files
    model = _model(converted)
    with torch.no_grad():
        for name, x in _supported(inputs).items():
            out = model(x)
            grid = (x.shape[-2] // 16, x.shape[-1] // 16)
            torch.testing.assert_close(out.summary, expected[f"{name}.summary"], atol=ATOL, rtol=0)
            torch.testing.assert_close(out.features, expected[f"{name}.features"], atol=ATOL, rtol=0)
            nchw = out.features.transpose(1, 2).reshape(x.shape[0], -1, *grid)
            torch.testing.assert_close(nchw, expected[f"{name}.features_nchw"], atol=ATOL, rtol=0)


def test_input_not_multiple_of_32_raises(fixture_files, converted):
    _, _, inputs, _ = fixture_files
    model = _model(converted)
    with pytest.raises(ValueError, match=r"divisible by 32 but got H x W: 48 x 160.*64 x 160"):
        model(inputs["img_48x160"])
    assert model.get_nearest_supported_resolution(48, 160) == (64, 160)


def test_switch_to_deploy_gives_same_outputs(fixture_files, converted):
    _, _, inputs, _ = fixture_files
    model = _model(converted)
    with torch.no_grad():
        before = {k: model(x).features for k, x in _supported(inputs).items()}
        model.switch_to_deploy()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        for _ in range(2):  # the second pass reads the cached position bias
            for name, x in _supported(inputs).items():
                torch.testing.assert_close(model(x).features, before[name], atol=ATOL, rtol=0)


def test_save_load_round_trip(tmp_path, fixture_files, converted):
    _, _, inputs, _ = fixture_files
    model = _model(converted)
    model.save_pretrained(tmp_path)
    loaded = radio_vlm.ERadioModel.from_pretrained(tmp_path).eval()
    strip = lambda c: {k: v for k, v in c.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert strip(loaded.config) == strip(model.config)
    x = inputs["img_64x96"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).features, model(x).features, atol=0, rtol=0)


def test_window_adaptation(converted):
    model = _model(converted)
    picks = {size: model.set_optimal_window_size(size) for size in (224, 256, 384, 512, 1024, (96, 192))}
    assert picks == {224: 7, 256: 8, 384: 12, 512: 16, 1024: 16, (96, 192): 3}  # official table + (96, 192)
    # the relative coordinates stay normalised by the trained window (4), so a 3x3 window's bias is the
    # 4x4 window's bias restricted to the offsets they share
    cpb = model.levels[2].blocks[0].attention_blocks[0].attn.pos_emb_funct
    with torch.no_grad():
        bias4 = cpb(4)[0].view(-1, 4, 4, 4, 4)[:, :3, :3, :3, :3]
        bias3 = cpb(3)[0].view(-1, 3, 3, 3, 3)
    torch.testing.assert_close(bias3, bias4, atol=1e-6, rtol=0)
    # with the adapted window the 96x160 input runs without resizing its feature maps
    model.set_optimal_window_size((96, 192))
    calls = []
    original = torch.nn.functional.interpolate
    torch.nn.functional.interpolate = lambda *a, **k: calls.append(k) or original(*a, **k)
    try:
        with torch.no_grad():
            out = model(torch.rand(1, 3, 96, 192))
    finally:
        torch.nn.functional.interpolate = original
    assert out.features.shape == (1, 6 * 12, 32)
    assert all(k.get("scale_factor") == 2 for k in calls)  # only the neck's stage-3 upsample


def test_trains_end_to_end():
    model = ERadioModel(tiny_eradio_config()).train()
    out = model(torch.rand(2, 3, 64, 64))
    assert out.summary.shape == (2, 16) and out.features.shape == (2, 16, 16)
    out.features.square().mean().backward()
    cpb = model.levels[3].blocks[0].attention_blocks[0].attn.pos_emb_funct.cpb_mlp[0].weight
    assert cpb.grad is not None and cpb.grad.abs().sum() > 0


def test_constructor_rejects_unsupported_variant():
    with pytest.raises(ValueError, match="conv_base=False is not supported"):
        eradio_config_from_constructor(
            {
                "dim": 8,
                "in_dim": 8,
                "depths": [1, 1, 1, 1],
                "num_heads": [1, 1, 1, 1],
                "use_neck": True,
                "window_size": [None, None, [4, 4], 4],
                "sr_ratio": [1, 1, [2, 1], 1],
                "yolo_arch": True,
            }
        )


def test_unregistered_name_without_constructor_raises(fixture_files):
    _, checkpoint, _, _ = fixture_files
    with pytest.raises(ValueError, match="eradio_fixture_tiny.*constructor JSON"):
        convert_eradio_checkpoint(checkpoint)


def test_radio_with_adaptors_hosts_eradio(fixture_files, converted):
    _, _, inputs, expected = fixture_files
    config, state_dict = converted
    head = {"hidden_dim": 24, "output_dim": 12, "num_inner": 0, "mlp_version": "v2"}
    model = RadioWithAdaptors(
        RadioWithAdaptorsConfig(
            backbone_config=config.to_dict(), adaptors={"clip": {"summary": head, "feature": head}}
        )
    ).eval()
    model.backbone.load_state_dict(state_dict, strict=True)
    assert (model.patch_size, model.min_resolution_step, model.embed_dim) == (16, 32, 32)
    x = inputs["img_128x192"]
    with torch.no_grad():
        out = model(x, feature_fmt="NCHW")
    torch.testing.assert_close(out.summary, expected["img_128x192.summary"], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.features, expected["img_128x192.features_nchw"], atol=ATOL, rtol=0)
    assert out.adaptors["clip"].summary.shape == (1, 12)
    assert out.adaptors["clip"].features.shape == (1, 12, 8, 12)


def test_cli_convert_with_constructor_option(tmp_path, fixture_files):
    from transformers import AutoImageProcessor, AutoModel

    from radio_vlm.cli import main

    checkpoint_path, _, inputs, expected = fixture_files
    alone = tmp_path / "custom.pth.tar"  # no <name>_constructor.json beside it
    alone.write_bytes(checkpoint_path.read_bytes())
    out = tmp_path / "converted"
    constructor = checkpoint_path.with_name("eradio_tiny_constructor.json")
    # a renamed file is no known release: --version says which one, for its preferred resolution
    argv = ["convert", str(alone), str(out), "--constructor", str(constructor), "--version", "e-radio_v2"]
    assert main(argv) == 0
    model = AutoModel.from_pretrained(out).eval()
    assert model.config.backbone_config.model_type == "eradio" and model.config.version == "e-radio_v2"
    assert not model.config.vitdet_supported
    processor = AutoImageProcessor.from_pretrained(out)
    assert processor.min_resolution_step == 32
    # 100x130 resized to a 512 px long edge is 394x512: padded to 416x512 (step 32), not 400x512 (step 16)
    pixels = processor(torch.rand(3, 100, 130), return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape[-2:]) == (416, 512)
    with torch.no_grad():
        for name, x in _supported(inputs).items():
            got = model(x, feature_fmt="NCHW").features
            torch.testing.assert_close(got, expected[f"{name}.features_nchw"], atol=ATOL, rtol=0)


def test_packed_input_and_llava_tower(fixture_files, converted, modules_run):
    """Packed differently sized images (the LLaVA tower's input) give each image's own outputs; the tower
    reads the backbone's features and runs no adaptor head."""
    from radio_vlm.models.image_processing_radio import patchify
    from radio_vlm.models.modeling_radio_llava import RadioLlavaVisionModel

    _, _, inputs, expected = fixture_files
    config, state_dict = converted
    head = {"hidden_dim": 24, "output_dim": 12}
    model = RadioWithAdaptors(
        RadioWithAdaptorsConfig(
            backbone_config=config.to_dict(), adaptors={"clip": {"summary": head, "feature": head}}
        )
    ).eval()
    model.backbone.load_state_dict(state_dict, strict=True)
    images = [inputs["img_64x96"][0], inputs["img_128x192"][0]]
    grid_hw = torch.tensor([[4, 6], [8, 12]])
    with torch.no_grad():
        packed = model(torch.cat([patchify(im, 16) for im in images]), image_grid_hw=grid_hw)
        singles = [model(im[None]) for im in images]
    torch.testing.assert_close(packed.features, torch.cat([s.features[0] for s in singles]), atol=0, rtol=0)
    torch.testing.assert_close(packed.summary, torch.cat([s.summary for s in singles]), atol=0, rtol=0)
    torch.testing.assert_close(packed.features[:24], expected["img_64x96.features"][0], atol=ATOL, rtol=0)
    assert packed.adaptors["clip"].summary.shape == (2, 12) and packed.adaptors["clip"].features.shape == (
        120,
        12,
    )

    tower = RadioLlavaVisionModel.from_radio(model)
    padded = torch.zeros(2, 3, 128, 192)
    padded[0, :, :64, :96], padded[1] = images
    with torch.no_grad(), modules_run(model) as ran:
        out = tower(padded, image_sizes=torch.tensor([[64, 96], [128, 192]]))
    torch.testing.assert_close(out.last_hidden_state[0], packed.features, atol=0, rtol=0)
    assert "backbone" in ran and not [name for name in ran if name.startswith("adaptors.")]
