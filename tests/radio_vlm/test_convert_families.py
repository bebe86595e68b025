"""The newer official families against tests/fixtures/radio_reference_more (README there): C-RADIOv4-style
attention heads (E), the DINOv2 student of RADIO-g (F), the *_mlpnorm students (G), scaled-LN giants (H);
conversion that refuses unknown settings, keeps the adaptors asked for, and takes metadata from the releases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from radio_vlm.cli import main
from radio_vlm.convert import convert_official
from radio_vlm.convert.checkpoint import unpickle_checkpoint
from radio_vlm.convert.releases import RELEASES
from radio_vlm.convert.students import STUDENTS
from radio_vlm.convert.vit import backbone_config

TOL = 1e-5


@pytest.fixture(scope="module")
def more(fixtures_dir) -> Path:
    return fixtures_dir / "radio_reference_more"


@pytest.fixture(scope="module")
def p14_inputs(more) -> dict[str, torch.Tensor]:
    """F's inputs: top-left crops of the core images with sides multiples of 14, as float32 (README, Inputs)."""
    return load_file(more / "inputs_p14_float32.safetensors")


def _rewrite(src: Path, dst: Path, edit) -> Path:
    checkpoint = unpickle_checkpoint(src)
    edit(checkpoint)
    torch.save(checkpoint, dst)
    return dst


# (source, expected tensors file stem, intermediate indices (README: "Intermediate indices"), adaptors absent)
FAMILIES = [
    ("cradio_v4_style.pth.tar", "cradio_v4_style", (0, 1), ()),
    ("cradio_v4_style_hf", "cradio_v4_style", (0, 1), ("siglip2-g",)),  # the HF export has no attention head
    ("dinov2_student.pth.tar", "dinov2_student", (0, 2), ()),
    ("vit_mlpnorm.pth.tar", "vit_mlpnorm", (0, 2), ()),
    ("vit_mlpnorm_hf", "vit_mlpnorm", (0, 2), ()),
    ("vit_scaled_ln.pth.tar", "vit_scaled_ln", (0, 2), ()),
    ("vit_scaled_ln_hf", "vit_scaled_ln", (0, 2), ()),  # ln_scale is stored nowhere: derived from args
]


@pytest.mark.parametrize(("source", "stem", "indices", "absent"), FAMILIES)
def test_every_fixture_tensor_matches(
    more, core_inputs, p14_inputs, fixture_match, tmp_path, source, stem, indices, absent
):
    model = convert_official(more / source)
    assert not set(absent) & set(model.config.adaptors)
    expected = load_file(more / f"expected_{stem}.safetensors")
    kept = {k: v for k, v in expected.items() if k.split(".")[1] not in absent}
    save_file(kept, tmp_path / "expected.safetensors")
    inputs = p14_inputs if stem == "dinov2_student" else core_inputs
    checked, worst = fixture_match(model, tmp_path / "expected.safetensors", inputs, indices)
    assert checked == len(expected) - 6 * len(absent) and worst <= TOL


def test_resolution_rules_of_the_new_families(more):
    rules = json.loads((more / "resolution_rules.json").read_text())
    for name in ("cradio_v4_style", "dinov2_student", "vit_mlpnorm", "vit_scaled_ln"):
        model, rule = convert_official(more / f"{name}.pth.tar"), rules[name]
        assert (model.patch_size, model.min_resolution_step) == (
            rule["patch_size"],
            rule["min_resolution_step"],
        )
        assert model.num_summary_tokens == rule["num_summary_tokens"]
        assert (
            model.num_cls_tokens == rule["num_cls_tokens_with_adaptors"]
        )  # E: sam3's token_slot 3 reads a register
        assert model.backbone.summary_idxs.tolist() == rule["summary_idxs"]
        assert model.summary_dim == rule["summary_dim"]
        assert {n: spec["head_idx"] for n, spec in model.config.adaptors.items()} == rule["adaptor_head_idx"]
        for size, nearest in rule["nearest"].items():
            assert list(model.get_nearest_supported_resolution(*map(int, size.split("x")))) == nearest


def test_attention_head_nchw_equals_nlc_reshaped(more, core_inputs):
    """The official code crashes on NCHW with an attention head loaded (README quirk 2); ours reshapes."""
    model = convert_official(more / "cradio_v4_style.pth.tar")
    assert model.config.adaptors["siglip2-g"]["feature"]["mlp_version"] == "attn"
    x = core_inputs["img_64x96"]
    with torch.no_grad():
        nlc, nchw = (
            model(x).adaptors["siglip2-g"].features,
            model(x, feature_fmt="NCHW").adaptors["siglip2-g"].features,
        )
    assert nchw.shape == (1, 36, 4, 6)
    torch.testing.assert_close(nchw, nlc.reshape(1, 4, 6, 36).permute(0, 3, 1, 2), rtol=0, atol=0)


def test_upsampling_attention_head(more, core_inputs, tmp_path):
    """An attention head with fd_upsample_factor 2 (official: ValueError, README quirk 1) uses the MLP v2 layout."""

    def edit(checkpoint):
        checkpoint["args"].teachers[0]["fd_upsample_factor"] = 2  # 36 output channels = 2 * 2 * 9

    model = convert_official(_rewrite(more / "cradio_v4_style.pth.tar", tmp_path / "up.pth.tar", edit))
    assert model.config.adaptors["siglip2-g"]["feature"]["upsample_factor"] == 2
    x = core_inputs["img_64x96"]
    with torch.no_grad():
        out = model(x)
        raw = (
            model.adaptors["siglip2-g"].feature(out.features).reshape(1, 4, 6, 2, 2, 9)
        )  # (b, h, w, u1, u2, c)
        dense = out.adaptors["siglip2-g"].features.reshape(1, 8, 12, 9)
        nchw = model(x, feature_fmt="NCHW").adaptors["siglip2-g"].features
    torch.testing.assert_close(dense, raw.permute(0, 1, 3, 2, 4, 5).reshape(1, 8, 12, 9), rtol=0, atol=0)
    torch.testing.assert_close(nchw, dense.permute(0, 3, 1, 2), rtol=0, atol=0)


def test_adaptors_option_keeps_the_heads_asked_for(more, core_inputs, tmp_path):
    out = tmp_path / "converted"
    assert (
        main(["convert", str(more / "cradio_v4_style.pth.tar"), str(out), "--adaptors", "siglip2-g,sam3"])
        == 0
    )
    from transformers import AutoModel

    model = AutoModel.from_pretrained(out)
    assert sorted(model.config.adaptors) == ["sam3", "siglip2-g"]
    expected = load_file(more / "expected_cradio_v4_style.safetensors")
    with torch.no_grad():
        got = model(core_inputs["img_128x128"])
    for name in ("siglip2-g", "sam3"):
        torch.testing.assert_close(
            got.adaptors[name].features, expected[f"img_128x128.{name}.features"], rtol=0, atol=TOL
        )
    with pytest.raises(ValueError, match=r"no adaptor \['clip'\] among the checkpoint's teachers"):
        convert_official(more / "cradio_v4_style.pth.tar", adaptors=["clip"])
    with pytest.raises(ValueError, match="'siglip2-g', but the checkpoint holds no weights for it"):
        convert_official(more / "cradio_v4_style_hf", adaptors=["siglip2-g"])
    with pytest.warns(UserWarning, match=r"no adaptor weights for the teachers \['siglip2-g'\]"):
        convert_official(more / "cradio_v4_style_hf")


def test_unreadable_head_is_named_and_adaptors_converts_the_rest(more, tmp_path):
    def edit(checkpoint):
        state = checkpoint["state_dict"]
        state["_feature_projections.dino_v3_7b.final.3.weight"] = state.pop(
            "_feature_projections.dino_v3_7b.final.2.weight"
        )

    path = _rewrite(more / "cradio_v4_style.pth.tar", tmp_path / "odd_head.pth.tar", edit)
    with pytest.raises(ValueError) as err:
        convert_official(path)
    message = str(err.value)
    assert "'dino_v3_7b'" in message and "final.3.weight" in message
    assert "Pass --adaptors siglip2-g,sam3 to convert the others" in message
    model = convert_official(path, adaptors=["siglip2-g", "sam3"])
    assert sorted(model.config.adaptors) == ["sam3", "siglip2-g"]


def test_dinov2_student_needs_its_constructor_and_accepts_the_real_name(more, tmp_path):
    alone = tmp_path / "student.pth.tar"
    shutil.copyfile(more / "dinov2_student.pth.tar", alone)  # no student_constructor.json beside it
    with pytest.raises(
        ValueError, match="dino_v2_fixture_tiny_student.*custom DINOv2 student.*constructor JSON"
    ):
        convert_official(alone)
    assert convert_official(alone, constructor=more / "dinov2_student_constructor.json").config.final_norm

    def real_name(checkpoint):
        checkpoint["args"].model = "dino_v2_g_student"

    path = _rewrite(more / "dinov2_student.pth.tar", tmp_path / "g.pth.tar", real_name)
    with pytest.raises(
        ValueError, match=r"disagree with args.model='dino_v2_g_student': embed_dim 32 in the weights, 1536"
    ):
        convert_official(path)


def test_radio_g_geometry_from_its_weight_shapes():
    """`dino_v2_g_student` (dinov2_vitg14_reg): 1536 wide, 40 deep, 24 heads, SwiGLU 4096, patch 14 + bias."""
    state = {
        "base_model.patch_generator.embedder.weight": torch.empty(1536, 588, device="meta"),
        "base_model.patch_generator.embedder.bias": torch.empty(1536, device="meta"),
        "base_model.patch_generator.pos_embed": torch.empty(1, 128 * 128, 1536, device="meta"),
        "base_model.patch_generator.cls_token.token": torch.empty(5, 1536, device="meta"),
        "base_model.norm.weight": torch.empty(1536, device="meta"),
        "input_conditioner.norm_mean": torch.zeros(3, 1, 1),
        "input_conditioner.norm_std": torch.ones(3, 1, 1),
    }
    for i in range(40):
        state |= {
            f"base_model.blocks.{i}.attn.qkv.bias": torch.empty(3 * 1536, device="meta"),
            f"base_model.blocks.{i}.ls1.grandma": torch.empty(1536, device="meta"),
            f"base_model.blocks.{i}.mlp.w12.weight": torch.empty(2 * 4096, 1536, device="meta"),
            f"base_model.blocks.{i}.mlp.w3.weight": torch.empty(1536, 4096, device="meta"),
        }
    args = {
        "cpe_max_size": 1792,
        "cls_token_per_teacher": False,
        "cpe_num_registers": 4,
        "teachers": [{"name": "clip"}],
    }
    backbone, variants = backbone_config(
        args, state, STUDENTS["dino_v2_g_student"], "dino_v2_g_student", [0], Path("g")
    )
    geometry = (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "patch_size",
        "max_img_size",
        "num_registers",
    )
    assert [backbone[k] for k in geometry] == [1536, 40, 24, 14, 1792, 4]
    assert backbone["use_swiglu_ffn"] and variants == {
        "patch_embed_bias": True,
        "mlp_norm": False,
        "scaled_ln": False,
        "final_norm": True,
    }


def test_scaled_ln_comes_from_args_and_is_checked(more, core_inputs, tmp_path):
    model = convert_official(more / "vit_scaled_ln.pth.tar")
    scales = [layer.norm2.scale for layer in model.backbone.encoder.layer]
    assert scales == pytest.approx([1.0, 2**-0.5, 3**-0.5]) and model.config.scaled_ln

    def elsewhere(checkpoint):
        checkpoint["args"].model = "vit_huge_patch16_224"  # whose builder has no scaled_ln argument

    with pytest.raises(ValueError, match="takes no scaled_ln"):
        convert_official(_rewrite(more / "vit_scaled_ln.pth.tar", tmp_path / "h.pth.tar", elsewhere))

    def no_norm(checkpoint):
        for key in ("base_model.norm.weight", "base_model.norm.bias"):
            del checkpoint["state_dict_ema"][key]

    with pytest.raises(ValueError, match=r"model_norm=True but the weights have no base_model.norm"):
        convert_official(_rewrite(more / "vit_scaled_ln.pth.tar", tmp_path / "n.pth.tar", no_norm))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: a.model_kwargs.update(qk_norm=True), r"args\.model_kwargs\.qk_norm=True"),
        (lambda a: setattr(a, "video_temporal_patch_size", 2), r"args\.video_temporal_patch_size=2"),
        (lambda a: a.teachers[1].update(fd_normalize="pca"), r"args\.teachers\[1\]\.fd_normalize='pca'"),
        (lambda a: setattr(a, "in_chans", 4), r"args\.in_chans=4 \(reproducible: None or 3\)"),
        (lambda a: setattr(a, "spectral_reparam", {"lr": 1}), r"args\.spectral_reparam=\{'lr': 1\}"),
    ],
)
def test_unknown_or_unreproducible_settings_are_refused_by_name(more, tmp_path, edit, message):
    path = _rewrite(more / "vit_mlpnorm.pth.tar", tmp_path / "setting.pth.tar", lambda c: edit(c["args"]))
    with pytest.raises(ValueError, match=r"setting\.pth\.tar: not converted: .*" + message):
        convert_official(path)


def test_inert_arg_accepts_a_setting_the_user_checked(more, tmp_path):
    def edit(checkpoint):
        checkpoint["args"].ema_warmup_steps = 1000
        checkpoint["args"].teachers[0]["loss_weight"] = 0.5

    path = _rewrite(more / "vit_mlpnorm.pth.tar", tmp_path / "train.pth.tar", edit)
    with pytest.raises(ValueError, match="--inert-arg ema_warmup_steps,teachers.loss_weight"):
        convert_official(path)
    out = tmp_path / "out"
    argv = [
        "convert",
        str(path),
        str(out),
        "--inert-arg",
        "ema_warmup_steps",
        "--inert-arg",
        "teachers.loss_weight",
    ]
    assert main(argv) == 0 and (out / "model.safetensors").is_file()


def test_student_names_are_checked(more, tmp_path):
    for name, message in [
        ("vit_mystery_patch16_224", "not an official RADIO student architecture"),
        ("vit_large_dyt_patch16_224", "DyT"),
        ("dino_v2_l_student", "is a dinov2 student, but the weights are a timm ViT"),
    ]:
        path = _rewrite(
            more / "vit_mlpnorm.pth.tar",
            tmp_path / "name.pth.tar",
            lambda c, n=name: setattr(c["args"], "model", n),
        )
        with pytest.raises(ValueError, match=message):
            convert_official(path)


def test_registry_fills_metadata_by_official_file_name(more, tmp_path):
    target = tmp_path / RELEASES["c-radio_v3-h"].file_name  # "c-radio_v3-h_half.pth.tar", as downloaded
    shutil.copyfile(more / "vit_mlpnorm.pth.tar", target)
    config = convert_official(target).config
    assert (config.version, config.preferred_resolution, config.vitdet_supported) == (
        "c-radio_v3-h",
        [512, 512],
        False,
    )
    assert config.max_resolution == 256  # the checkpoint's own position table wins
    model = convert_official(more / "vit_mlpnorm.pth.tar", version="c-radio_v2-g")
    assert (model.config.vitdet_num_global, model.config.vitdet_supported) == (8, True)
    with pytest.raises(ValueError, match="--version 'radio_v9' is no known release"):
        convert_official(more / "vit_mlpnorm.pth.tar", version="radio_v9")


def test_models_command_lists_the_releases(capsys):
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == [
        "name",
        "HF",
        "repo",
        "family",
        "patch",
        "preferred",
        "max",
        "ViTDet",
        "adaptors",
        "converts",
    ]
    assert all(name in table for name in RELEASES)
    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    # radio/common.py RESOURCE_MAP at c0f3701, and the README's "Supported Adaptors"
    assert (rows["radio_v2.5-g"]["patch_size"], rows["radio_v2.5-g"]["max_resolution"]) == (14, 1792)
    assert (rows["radio_v2.5-g"]["preferred_resolution"], rows["radio_v2.5-g"]["vitdet_num_global"]) == (
        896,
        8,
    )
    assert (
        rows["c-radio_v4-h"]["adaptors"] == ["siglip2-g", "dino_v3", "sam3"]
        and rows["c-radio_v4-h"]["converts"]
    )
    assert not any(rows[f"c-radio_v3-{s}"]["supports_vitdet"] for s in "blhg")


def test_eradio_hf_folder_goes_to_the_eradio_converter(fixtures_dir, core_inputs, fixture_match, tmp_path):
    """An HF export of E-RADIO (hf_hub.py: `radio_model.model.*` = `base_model.*`) converts like its .pth.tar."""
    extra = fixtures_dir / "radio_reference_extra"
    checkpoint = unpickle_checkpoint(extra / "eradio_tiny.pth.tar")
    folder = tmp_path / "eradio_tiny_hf"
    folder.mkdir()
    renamed = {
        "radio_model." + k.replace("base_model.", "model.", 1): v for k, v in checkpoint["state_dict"].items()
    }
    save_file({k: v.contiguous() for k, v in renamed.items()}, folder / "model.safetensors")
    args = {k: (str(v).split(".")[-1] if k == "dtype" else v) for k, v in vars(checkpoint["args"]).items()}
    config = {
        "args": args,
        "version": "e-radio_v2",
        "max_resolution": 2048,
        "preferred_resolution": [512, 512],
    }
    (folder / "config.json").write_text(json.dumps(config))
    model = convert_official(folder, constructor=extra / "eradio_tiny_constructor.json")
    assert model.config.backbone_config.model_type == "eradio" and model.config.version == "e-radio_v2"
    expected = {k: v for k, v in load_file(extra / "expected_eradio_tiny.safetensors").items() if "x1" in k}
    save_file(expected, tmp_path / "expected.safetensors")  # img_128x128, img_128x192, img_320x192
    assert fixture_match(model, tmp_path / "expected.safetensors", core_inputs)[0] == 9


def test_unknown_hf_config_setting_is_refused(more, tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(more / "vit_mlpnorm_hf", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "separate_video_embedder": True}))
    with pytest.raises(
        ValueError, match=r"config\.json separate_video_embedder=True.*--inert-arg config\.separate"
    ):
        convert_official(folder)
    assert convert_official(folder, inert_args=["config.separate_video_embedder"]).config.mlp_norm
