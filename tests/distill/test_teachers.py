"""Teacher registry and loaders: every tiny twin builds through its loader; real-teacher paths load local files."""

import dataclasses
import json

import pytest
import torch

from distill.teachers import (
    TeacherOutput,
    TeacherSpec,
    get_teacher_spec,
    list_teachers,
    load_teacher,
    register_teacher,
)

TINY = [name for name in list_teachers() if get_teacher_spec(name).random_weights]
PAPER = [
    "dfn_clip_vith14_378",
    "openai_clip_vitl14_336",
    "siglip_so400m_384",
    "dinov2_vitg14_reg",
    "sam_vith",
]


def _images(spec: TeacherSpec, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(
        batch, 3, spec.resolution, spec.resolution, generator=torch.Generator().manual_seed(seed)
    )


def test_registry_covers_paper_teachers_and_a_twin_per_loader():
    names = list_teachers()
    assert set(PAPER) <= set(names)
    assert {get_teacher_spec(n).loader for n in TINY} == {get_teacher_spec(n).loader for n in names}
    # The twins differ in resolution and patch size, so losses see mismatched grids.
    assert len({(get_teacher_spec(n).resolution, get_teacher_spec(n).patch_size) for n in TINY}) == len(TINY)
    with pytest.raises(KeyError, match="unknown teacher 'clip'.*tiny_clip"):
        get_teacher_spec("clip")  # exact names only, no substring matching
    with pytest.raises(ValueError, match="already registered"):
        register_teacher(get_teacher_spec("tiny_clip"))
    assert get_teacher_spec("sam_vith", source="/x").source == "/x"


@pytest.mark.parametrize("name", TINY)
def test_tiny_teacher_shapes_frozen_and_deterministic(name):
    spec = get_teacher_spec(name)
    teacher = load_teacher(spec)
    teacher.train()  # must stay in eval mode
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    out = teacher(_images(spec))
    grid = spec.resolution // spec.patch_size
    assert out.features.shape == (2, grid, grid, spec.feature_dim) and out.features.dtype == torch.float32
    if spec.summary is None:
        assert out.summary is None
    else:
        assert out.summary.shape == (2, spec.summary_dim) and out.summary.dtype == torch.float32
    again = load_teacher(spec)(_images(spec))  # same seed -> same weights -> same outputs
    torch.testing.assert_close(again.features, out.features, rtol=0, atol=0)
    # Targets leave inference mode, so they can sit in an autograd graph with the student's outputs.
    student = torch.randn_like(out.features, requires_grad=True)
    torch.nn.functional.cosine_similarity(student, out.features, dim=-1).sum().backward()
    assert student.grad is not None


def test_wrong_input_size_and_missing_source_are_clear_errors(tmp_path):
    teacher = load_teacher("tiny_dinov2")
    with pytest.raises(ValueError, match=r"takes \(B, 3, 56, 56\)"):
        teacher(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="needs local weights"):
        load_teacher("sam_vith", device="cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_teacher(get_teacher_spec("dinov2_vitg14_reg", source=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_teacher(get_teacher_spec("dinov2_vitg14_reg", source=str(tmp_path)))


def test_bf16_teacher_returns_fp32():
    spec = get_teacher_spec("tiny_hf_clip")
    out = load_teacher(spec, dtype=torch.bfloat16)(_images(spec))
    ref = load_teacher(spec)(_images(spec))
    assert out.features.dtype == torch.float32
    torch.testing.assert_close(out.features, ref.features, atol=0.1, rtol=0.05)


def _assert_same(a: TeacherOutput, b: TeacherOutput) -> None:
    torch.testing.assert_close(a.features, b.features)
    if a.summary is not None:
        torch.testing.assert_close(a.summary, b.summary)


@pytest.mark.parametrize("name", ["tiny_hf_clip", "tiny_siglip", "tiny_dinov2", "tiny_dinov2_reg"])
def test_hf_teacher_loads_from_save_pretrained_folder(name, tmp_path):
    tiny = get_teacher_spec(name)
    teacher = load_teacher(tiny)
    teacher.backbone.model.save_pretrained(tmp_path)
    real = dataclasses.replace(tiny, random_weights=False, config=None, source=str(tmp_path))
    _assert_same(load_teacher(real)(_images(tiny)), teacher(_images(tiny)))


def test_hf_clip_reads_vision_tower_of_full_clip_model(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    tiny = get_teacher_spec("tiny_hf_clip")
    config = CLIPConfig(
        vision_config=dict(tiny.config),
        text_config={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
        },
        projection_dim=tiny.summary_dim,
    )
    clip = CLIPModel(config).eval()
    clip.save_pretrained(tmp_path)
    spec = dataclasses.replace(tiny, random_weights=False, config=None, source=str(tmp_path))
    images = _images(tiny)
    out = load_teacher(spec)(images)
    with torch.no_grad():  # the summary is CLIP's projected, text-aligned image embedding
        expected = clip.get_image_features(pixel_values=images)
    expected = getattr(expected, "pooler_output", expected)
    torch.testing.assert_close(out.summary, expected)


def test_open_clip_teacher_loads_weights_file_and_local_dir(tmp_path):
    import open_clip

    tiny = get_teacher_spec("tiny_clip")
    teacher = load_teacher(tiny)
    model = open_clip.create_model(tiny.arch, load_weights=False, **tiny.config)
    model.visual.load_state_dict(teacher.backbone.visual.state_dict())
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    images = _images(tiny)

    # A weights file with an architecture name (registered from a JSON file as open_clip users do).
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "tiny-test-clip.json").write_text(json.dumps(tiny.config))
    open_clip.add_model_config(tmp_path / "cfg")
    from_file = dataclasses.replace(
        tiny, random_weights=False, config=None, arch="tiny-test-clip", source=str(tmp_path / "weights.pt")
    )
    _assert_same(load_teacher(from_file)(images), teacher(images))

    # A Hub-style open_clip folder: open_clip_config.json + open_clip_pytorch_model.bin.
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": tiny.config, "preprocess_cfg": {}})
    )
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    local_dir = dataclasses.replace(tiny, random_weights=False, source=f"local-dir:{folder}")
    _assert_same(load_teacher(local_dir)(images), teacher(images))


@pytest.mark.parametrize("fmt", ["full_sam_pth", "encoder_safetensors"])
def test_sam_teacher_loads_checkpoint(fmt, tmp_path):
    from safetensors.torch import save_file

    tiny = get_teacher_spec("tiny_sam")
    teacher = load_teacher(tiny)
    # The teacher drops the neck; a real checkpoint still carries it (and the prompt encoder, mask decoder).
    from segment_anything.modeling import ImageEncoderViT

    neck = ImageEncoderViT(**tiny.config).neck.state_dict()
    encoder_state = {f"neck.{k}": v for k, v in neck.items()} | teacher.backbone.encoder.state_dict()
    if fmt == "full_sam_pth":
        path = tmp_path / "sam.pth"
        state = {f"image_encoder.{k}": v for k, v in encoder_state.items()}
        state["mask_decoder.iou_token.weight"] = torch.zeros(1, 16)
        torch.save(state, path)
    else:
        path = tmp_path / "encoder.safetensors"
        save_file({k: v.contiguous() for k, v in encoder_state.items()}, str(path))
    real = dataclasses.replace(tiny, random_weights=False, source=str(path))
    _assert_same(load_teacher(real)(_images(tiny)), teacher(_images(tiny)))


def test_spec_that_disagrees_with_the_weights_is_a_clear_error():
    wrong = dataclasses.replace(get_teacher_spec("tiny_dinov2"), feature_dim=64, summary_dim=64)
    with pytest.raises(ValueError, match="belong to a different model"):
        load_teacher(wrong)(torch.zeros(1, 3, 56, 56))
