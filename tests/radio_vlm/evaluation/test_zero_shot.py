"""Zero-shot: class embeddings and the teacher's own predictions against open_clip's zero-shot classifier on the
teacher itself, the student's top-1 by hand, a Hugging Face CLIP folder, and the bad-input errors."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from radio_vlm.cli import main
from radio_vlm.evaluation.common import load_model
from radio_vlm.evaluation.datasets import ClassifyTransform, ImageFolder, load_templates
from radio_vlm.evaluation.zero_shot import load_text_tower, logit_correlation, zero_shot_classifier

from .conftest import TINY_CLIP

NAMES = ["circle", "cross", "square", "triangle"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A random tiny open_clip CLIP in the Hub's open_clip layout (open_clip_config.json + safetensors)."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", load_weights=False, **TINY_CLIP)
    config = {
        "model_cfg": {**open_clip.get_model_config("ViT-B-16"), **TINY_CLIP},
        "preprocess_cfg": {"size": 64},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "open_clip_model.safetensors"),
    )
    return folder


def _open_clip(folder):
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{folder}")


def test_class_embeddings_equal_open_clips_zero_shot_classifier(clip_folder):
    model, _, tokenizer = _open_clip(clip_folder)
    templates = load_templates("openai")
    expected = open_clip.build_zero_shot_classifier(
        model, tokenizer, NAMES, templates, num_classes_per_batch=3
    )
    ours = zero_shot_classifier(load_text_tower(clip_folder), NAMES, templates)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)


def test_zero_shot_command_against_open_clip_on_the_teacher_itself(
    clip_folder, vision_data, tiny_model, tmp_path
):
    val = vision_data / "classify" / "val"
    argv = ["eval", "zero-shot", "--model", str(tiny_model), "--adaptor", "clip", "--text-tower", str(clip_folder),
            "--val", str(val), "--classnames", "folders", "--templates", "simple", "--agreement-with-teacher",
            "--out", str(tmp_path), "--workers", "0"]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]

    # the teacher's zero-shot top-1 through open_clip's own pipeline: its preprocess, encode_image, classifier
    model, preprocess, tokenizer = _open_clip(clip_folder)
    folder = ImageFolder.scan(val)
    images = [Image.open(p).convert("RGB") for p, _ in folder.samples]
    with torch.no_grad():
        classifier = open_clip.build_zero_shot_classifier(model, tokenizer, NAMES, load_templates("simple"))
        teacher = (
            model.encode_image(torch.stack([preprocess(i) for i in images]), normalize=True) @ classifier
        )
    labels = folder.labels
    assert metrics["teacher_top1"] == pytest.approx(
        100.0 * (teacher.argmax(1) == labels).double().mean().item()
    )
    assert metrics["teacher_classes_predicted"] == teacher.argmax(1).unique().numel()

    # the student's: its clip summary of the centre-cropped 64 px view, one image at a time
    student_model = load_model(tiny_model, torch.device("cpu"))
    transform = ClassifyTransform.for_model(student_model)
    with torch.no_grad():
        summaries = torch.cat([student_model(transform(i)[None]).adaptors["clip"].summary for i in images])
    student = F.normalize(summaries, dim=1) @ classifier
    assert metrics["top1"] == pytest.approx(100.0 * (student.argmax(1) == labels).double().mean().item())
    same = (student.argmax(1) == teacher.argmax(1)).double().mean().item()
    assert metrics["agreement"] == pytest.approx(100.0 * same)
    assert metrics["logit_correlation"] == pytest.approx(
        100.0 * logit_correlation(student, teacher), abs=1e-3
    )


def test_logit_correlation_by_hand():
    teacher = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])  # class 1 never varies: left out
    assert logit_correlation(teacher * 2 + 5, teacher) == pytest.approx(1.0)
    assert logit_correlation(-teacher, teacher) == pytest.approx(-1.0)
    assert logit_correlation(torch.ones(3, 2), teacher) is None


def test_a_hugging_face_clip_folder_is_a_text_tower(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    # a byte-level BPE vocabulary without merges: every character is a token
    chars = list(bytes_to_unicode().values())
    vocab = {
        c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])
    }
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path
    )
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "intermediate_size": 32, "max_position_embeddings": 40, "bos_token_id": len(vocab) - 2,
                     "eos_token_id": len(vocab) - 1},
        vision_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                       "image_size": 32, "patch_size": 16},
        projection_dim=24,
    )  # fmt: skip
    model = CLIPModel(config).eval()
    model.save_pretrained(tmp_path)
    tower = load_text_tower(tmp_path)
    assert tower.embed_dim == 24
    texts, image = ["a photo of a circle.", "a cross"], Image.new("RGB", (40, 30), (200, 30, 30))
    tokens = CLIPTokenizer.from_pretrained(tmp_path)(texts, padding=True, return_tensors="pt")
    pixels = CLIPImageProcessor.from_pretrained(tmp_path)(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(**tokens, pixel_values=pixels)  # CLIP's forward returns normalised embeddings
    torch.testing.assert_close(tower.encode_text(texts), out.text_embeds)
    torch.testing.assert_close(tower.encode_pixels(tower.preprocess(image)[None]), out.image_embeds)


def test_bad_text_towers_and_class_lists_are_clear_errors(clip_folder, vision_data, tiny_model, tmp_path):
    base = ["eval", "zero-shot", "--model", str(tiny_model), "--text-tower", str(clip_folder),
            "--val", str(vision_data / "classify" / "val"), "--out", str(tmp_path)]  # fmt: skip
    with pytest.raises(ValueError, match=r"have 24 dims but adaptor 'dino_v2' outputs 40"):
        main([*base, "--adaptor", "dino_v2", "--classnames", "folders"])
    with pytest.raises(ValueError, match="1000 names for 4 class folders"):
        main([*base, "--adaptor", "clip", "--classnames", "imagenet"])
    with pytest.raises(ValueError, match="zero-shot needs --adaptor"):
        main(base)
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="pass --text-tower-arch"):
        load_text_tower(tmp_path / "weights.pt")
