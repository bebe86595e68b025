"""Conversion of official RADIO checkpoints, checked against every tensor of the official fixtures (1e-5)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from radio_vlm.cli import main
from radio_vlm.convert import convert_official, read_state_dict
from radio_vlm.models.image_processing_radio import RadioImageProcessor

TOL = 1e-5  # fixture README: max |diff| <= 1e-5 in float32 for every tensor


@pytest.fixture(scope="module")
def ref(fixtures_dir) -> Path:
    return fixtures_dir / "radio_reference"


@pytest.fixture(scope="module")
def inputs(core_inputs) -> dict[str, torch.Tensor]:
    return core_inputs


FIXTURES = [
    ("vit_cpe_adaptors.pth.tar", "expected_vit_cpe_adaptors.safetensors", False),
    ("vit_cpe_adaptors_hf", "expected_vit_cpe_adaptors.safetensors", False),
    ("vit_cpe_adaptors.pth.tar", "expected_vit_cpe_adaptors_align_corners_true.safetensors", True),
    ("vit_layerscale.pth.tar", "expected_vit_layerscale.safetensors", False),
    ("vit_spectral.pth.tar", "expected_vit_spectral.safetensors", False),
    ("vit_feature_normalizer.pth.tar", "expected_vit_feature_normalizer.safetensors", False),
]


@pytest.mark.parametrize(("source", "expected", "align_corners"), FIXTURES)
def test_official_fixture(ref, inputs, fixture_match, source, expected, align_corners):
    model = convert_official(ref / source, align_corners=align_corners)
    assert fixture_match(model, ref / expected, inputs)[0] >= 12


def test_hf_folder_adaptors_converted_although_adaptor_names_is_null(ref):
    assert json.loads((ref / "vit_cpe_adaptors_hf" / "config.json").read_text())["adaptor_names"] is None
    model = convert_official(ref / "vit_cpe_adaptors_hf")
    assert sorted(model.config.adaptors) == ["clip", "dino_v2", "sam"]
    assert model.config.preferred_resolution == [128, 128] and model.config.max_resolution == 256


def test_resolution_rules(ref):
    rules = json.loads((ref / "resolution_rules.json").read_text())
    for name in ("vit_cpe_adaptors", "vit_layerscale", "vit_spectral", "vit_feature_normalizer"):
        model, rule = convert_official(ref / f"{name}.pth.tar"), rules[name]
        assert model.patch_size == rule["patch_size"] and model.embed_dim == rule["embed_dim"]
        assert model.min_resolution_step == rule["min_resolution_step"]
        assert model.num_summary_tokens == rule["num_summary_tokens"]
        assert model.config.backbone_config.num_cls_tokens == rule["num_cls_tokens"]
        assert model.config.backbone_config.num_registers == rule["num_registers"]
        assert model.backbone.summary_idxs.tolist() == rule["summary_idxs"]
        assert model.summary_dim == rule["summary_dim"]
        assert model.backbone.embeddings.max_rows == rule["pos_table_grid"][0]
        heads = {n: spec["head_idx"] for n, spec in model.config.adaptors.items()}
        assert heads == rule.get("adaptor_head_idx", {})
        for size, nearest in rule["nearest"].items():
            assert list(model.get_nearest_supported_resolution(*map(int, size.split("x")))) == nearest
        with pytest.raises(ValueError) as err:
            model(torch.rand(1, 3, 100, 100))
        assert f"ValueError: {err.value}" == rule["forward_100x100"]
        if "vitdet_w2.nearest" in rule:
            model.set_vitdet(2, num_global=2)
            assert model.min_resolution_step == rule["vitdet_w2.min_resolution_step"]
            for size, nearest in rule["vitdet_w2.nearest"].items():
                assert list(model.get_nearest_supported_resolution(*map(int, size.split("x")))) == nearest
            with pytest.raises(ValueError) as err:
                model(torch.rand(1, 3, 48, 160))
            assert f"ValueError: {err.value}".startswith(rule["img_48x160.vitdet_w2.error"])


def _rewrite(src: Path, dst: Path, edit) -> Path:
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(src, map_location="cpu", weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, dst)
    return dst


def test_ema_preferred_module_prefix_and_index_keyed_adaptors(ref, inputs, tmp_path):
    def edit(ckpt):
        real = ckpt["state_dict"]
        names = {"clip": 0, "dino_v2": 1, "sam": 2}
        ema = {}
        for key, value in real.items():
            for name, index in names.items():  # the older ModuleList-style adaptor keys
                key = key.replace(f"_heads.{name}.", f"_heads.{index}.")
                key = key.replace(f"_feature_projections.{name}.", f"_feature_projections.{index}.")
            ema["module." + key] = value
        ckpt["state_dict_ema"] = ema
        ckpt["state_dict"] = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in real.items()}

    path = _rewrite(ref / "vit_cpe_adaptors.pth.tar", tmp_path / "ema.pth.tar", edit)
    model = convert_official(path)
    expected = load_file(ref / "expected_vit_cpe_adaptors.safetensors")
    with torch.no_grad():
        out = model(inputs["img_64x96"])
    for key, got in [("summary", out.summary), ("sam.features", out.adaptors["sam"].features)]:
        torch.testing.assert_close(got, expected[f"img_64x96.{key}"], rtol=0, atol=TOL)


def test_layerscale_gamma_spelling_and_layerscale_takes_effect(ref, inputs, tmp_path):
    def edit(ckpt):
        ckpt["state_dict"] = {k.replace(".grandma", ".gamma"): v for k, v in ckpt["state_dict"].items()}

    model = convert_official(_rewrite(ref / "vit_layerscale.pth.tar", tmp_path / "gamma.pth.tar", edit))
    expected = load_file(ref / "expected_vit_layerscale.safetensors")["img_64x96.features"]
    with torch.no_grad():
        torch.testing.assert_close(model(inputs["img_64x96"]).features, expected, rtol=0, atol=TOL)
        for layer in model.backbone.encoder.layer:
            layer.layer_scale1.lambda1.fill_(1.0)  # what transformers' own mapping leaves behind
        assert (model(inputs["img_64x96"]).features - expected).abs().max() > 1e-2


def test_mlp_v1_heads_match_a_plain_torch_reference(ref, inputs, tmp_path):
    torch.manual_seed(0)
    hidden, out_dim = 24, 10
    v1 = {"fc1.weight": torch.randn(hidden, 16), "fc1.bias": torch.randn(hidden)}
    v1 |= {"norm.weight": torch.rand(hidden) + 0.5, "norm.bias": torch.randn(hidden)}
    v1 |= {"inner.0.weight": torch.randn(hidden, hidden) / 5, "inner.0.bias": torch.randn(hidden)}
    v1 |= {"inner.1.weight": torch.rand(hidden) + 0.5, "inner.1.bias": torch.randn(hidden)}
    v1 |= {"fc2.weight": torch.randn(out_dim, hidden), "fc2.bias": torch.randn(out_dim)}

    def edit(ckpt):
        ckpt["state_dict"].update({f"_heads.teacher0.{k}": v for k, v in v1.items()})
        ckpt["args"].teachers[0]["mlp_version"] = "v1"  # the layout args declare must be the weights'

    model = convert_official(_rewrite(ref / "vit_layerscale.pth.tar", tmp_path / "v1.pth.tar", edit))
    spec = model.config.adaptors["teacher0"]["summary"]
    assert (spec["mlp_version"], spec["num_inner"], spec["output_dim"]) == ("v1", 1, out_dim)
    x = inputs["img_64x96"]
    with torch.no_grad():
        out = model(x)
        cls = out.last_hidden_state[:, 0]
        ln = torch.nn.functional.layer_norm
        y = torch.relu(
            ln(cls @ v1["fc1.weight"].T + v1["fc1.bias"], (hidden,), v1["norm.weight"], v1["norm.bias"])
        )
        y = y @ v1["inner.0.weight"].T + v1["inner.0.bias"]
        y = torch.relu(ln(y, (hidden,), v1["inner.1.weight"], v1["inner.1.bias"]))
        y = y @ v1["fc2.weight"].T + v1["fc2.bias"]
    torch.testing.assert_close(out.adaptors["teacher0"].summary, y, rtol=1e-5, atol=1e-5)
    assert out.adaptors["teacher0"].features is None


class NotAllowed:
    pass


def test_bad_checkpoints_give_named_errors(ref, tmp_path):
    torch.save({"state_dict": {}, "args": NotAllowed()}, tmp_path / "code.pth.tar")
    with pytest.raises(ValueError, match=r"code\.pth\.tar.*weights_only=True"):
        convert_official(tmp_path / "code.pth.tar")
    torch.save({"weights": {}}, tmp_path / "nostate.pth.tar")
    with pytest.raises(ValueError, match=r"nostate\.pth\.tar: no 'state_dict'"):
        convert_official(tmp_path / "nostate.pth.tar")

    def add_unknown(ckpt):
        ckpt["state_dict"]["base_model.blocks.0.attn.q_norm.weight"] = torch.ones(16)

    path = _rewrite(ref / "vit_layerscale.pth.tar", tmp_path / "unknown.pth.tar", add_unknown)
    with pytest.raises(ValueError, match=r"unknown\.pth\.tar.*attn\.q_norm"):
        convert_official(path)
    with pytest.raises(FileNotFoundError, match="missing.pth.tar"):
        convert_official(tmp_path / "missing.pth.tar")


def test_eradio_checkpoints_dispatch_to_convert_eradio(fixtures_dir, inputs, tmp_path):
    extra = fixtures_dir / "radio_reference_extra"
    for name in ("eradio_tiny.pth.tar", "eradio_tiny_constructor.json"):
        shutil.copyfile(extra / name, tmp_path / name)
    model = convert_official(tmp_path / "eradio_tiny.pth.tar")
    x = inputs["img_64x96"]
    expected = load_file(extra / "expected_eradio_tiny.safetensors")
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out.features, expected["img_64x96.features"], rtol=0, atol=TOL)
    torch.testing.assert_close(out.summary, expected["img_64x96.summary"], rtol=0, atol=TOL)


def test_cli_convert_writes_model_and_processor(ref, inputs, tmp_path):
    out = tmp_path / "converted"
    assert main(["convert", str(ref / "vit_cpe_adaptors_hf"), str(out)]) == 0
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in out.iterdir()}
    model = AutoModel.from_pretrained(out)
    processor = RadioImageProcessor.from_pretrained(out)
    assert processor.patch_size == 16
    expected = load_file(ref / "expected_vit_cpe_adaptors.safetensors")
    with torch.no_grad():
        got = model(inputs["img_48x160"]).adaptors["dino_v2"].features
    torch.testing.assert_close(got, expected["img_48x160.dino_v2.features"], rtol=0, atol=TOL)


FULL = [
    ("vit_cpe_adaptors.pth.tar", "expected_vit_cpe_adaptors.full.safetensors", False),
    ("vit_layerscale.pth.tar", "expected_vit_layerscale.full.safetensors", False),
    ("vit_spectral.pth.tar", "expected_vit_spectral.full.safetensors", False),
    ("vit_feature_normalizer.pth.tar", "expected_vit_feature_normalizer.full.safetensors", False),
]


@pytest.mark.parametrize(("source", "expected", "align_corners"), FULL)
def test_official_fixture_full_coverage(
    ref, fixtures_dir, inputs, fixture_match, source, expected, align_corners
):
    """Every tensor kind for every input (the extras folder; its float32 inputs equal the core uint8 / 255)."""
    extra = fixtures_dir / "radio_reference_extra"
    model = convert_official(ref / source, align_corners=align_corners)
    assert fixture_match(model, extra / expected, inputs)[0] >= 18


def test_metadata_from_known_version_file_name(ref, tmp_path):
    shutil.copyfile(ref / "vit_layerscale.pth.tar", tmp_path / "radio_v2.5-b.pth.tar")
    config = convert_official(tmp_path / "radio_v2.5-b.pth.tar").config
    assert config.version == "radio_v2.5-b" and config.preferred_resolution == [768, 768]
    assert config.max_resolution == 256  # the checkpoint's own position table (args.cpe_max_size) wins


def test_register_count_follows_args(ref, tmp_path):
    def edit(ckpt):
        ckpt["args"].register_multiple = 4  # 1 CLS -> 3 registers, but the weights hold 7

    path = _rewrite(ref / "vit_layerscale.pth.tar", tmp_path / "regs.pth.tar", edit)
    with pytest.raises(
        ValueError, match=r"regs\.pth\.tar: cls_token\.token has 8 rows but args give 1 CLS tokens \+ 3"
    ):
        convert_official(path)


def test_read_state_dict_reads_every_weights_format(tmp_path):
    """safetensors, zip-format .bin (memory-mapped), legacy .bin, and a sharded folder; nothing else."""
    state = {"a": torch.arange(3.0), "b": torch.ones(2, 2)}
    save_file(state, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "zip.bin")
    torch.save(state, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_file({"a": state["a"]}, sharded / "model-00001-of-00002.safetensors")
    save_file({"b": state["b"]}, sharded / "model-00002-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for source in ("w.safetensors", "zip.bin", "legacy.bin", "sharded"):
        loaded = read_state_dict(tmp_path / source)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state), source
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        read_state_dict(tmp_path)
