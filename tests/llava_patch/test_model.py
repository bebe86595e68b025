"""RADIO-LLaVA assembly: packed towers, feature sources, processor token counts, save/load, generation."""

from __future__ import annotations

import pytest
import torch

from llava_patch.model import build, load_pretrained, load_vision_tower
from radio_vlm import RadioLlavaVisionModel

PROMPTS = ["USER: <image>\nwhat color is it ASSISTANT:", "<image> a photo of"]


@pytest.fixture(scope="module")
def tiny():
    return build("tiny-radio", "tiny-llama", long_edge=64)


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, 48, 64, generator=generator), torch.rand(3, 64, 20, generator=generator)]


def test_mixed_size_batch_equals_images_one_by_one(tiny, images):
    model, processor = tiny
    inputs = processor(images=images, text=PROMPTS)
    # 48x64 stays 48x64 (3x4 patches); 64x20 stays 64x20, padded to 64x32 (4x2 patches)
    assert inputs["image_sizes"].tolist() == [[48, 64], [64, 32]]
    assert (inputs["input_ids"] == processor.image_token_id).sum(1).tolist() == [12, 8]
    with torch.no_grad():
        packed = model.model.get_image_features(
            inputs["pixel_values"], image_sizes=inputs["image_sizes"]
        ).pooler_output
        for i, (h, w) in enumerate(inputs["image_sizes"].tolist()):
            alone = model.model.get_image_features(
                inputs["pixel_values"][i : i + 1, :, :h, :w]
            ).pooler_output[0]
            torch.testing.assert_close(packed[i], alone, atol=1e-5, rtol=1e-5)
        out = model(**inputs, labels=inputs["input_ids"])
    assert torch.isfinite(out.loss) and out.logits.shape[:2] == inputs["input_ids"].shape


def test_feature_sources_concatenate(images):
    sources = ["backbone", "adaptor:clip", "layer:0"]
    tower = load_vision_tower("tiny-radio", feature_sources=sources)
    assert tower.config.hidden_size == 32 + 32 + 32
    pixels = images[0][None]
    with torch.no_grad():
        parts = [
            load_vision_tower("tiny-radio", feature_sources=[s])(pixels).last_hidden_state for s in sources
        ]
        torch.testing.assert_close(tower(pixels).last_hidden_state, torch.cat(parts, -1))
        radio_out = tower.radio(pixels)
        torch.testing.assert_close(parts[0], radio_out.features)
        torch.testing.assert_close(parts[1], radio_out.adaptors["clip"].features)
    assert not torch.allclose(parts[0], parts[2])
    with pytest.raises(ValueError, match="no feature head 'nope'"):
        load_vision_tower("tiny-radio", feature_sources=["adaptor:nope"])


@pytest.mark.parametrize(
    "sources",
    [["backbone"], ["adaptor:dino_v2"], ["layer:0", "adaptor:clip"]],
    ids=["backbone", "dino", "layer+clip"],
)
def test_tower_runs_only_the_adaptor_heads_it_reads(modules_run, sources):
    """A head the feature sources do not read never runs (tiny-radio's SAM head upsamples), and the
    features equal those the full RADIO output (every head) gives, packed or not."""
    tower = load_vision_tower("tiny-radio", feature_sources=sources)
    padded, sizes = torch.rand(2, 3, 64, 64), torch.tensor([[48, 64], [64, 32]])  # packed, cropped to sizes
    with torch.no_grad(), modules_run(tower.radio) as ran:
        features = tower(padded, image_sizes=sizes).last_hidden_state[0]
    heads = {name.split(".")[1] for name in ran if name.startswith("adaptors.")}
    assert heads == {arg for kind, _, arg in (s.partition(":") for s in sources) if kind == "adaptor"}
    with torch.no_grad():
        expected = []
        for image, (h, w) in zip(padded, sizes.tolist()):
            x = image[None, :, :h, :w]
            full, (layer0,) = tower.radio.forward_intermediates(x, indices=[0], output_fmt="NLC")
            by_source = {"backbone": full.features, "layer:0": layer0}
            by_source.update({f"adaptor:{n}": o.features for n, o in full.adaptors.items()})
            expected.append(torch.cat([by_source[s][0] for s in sources], -1))
    torch.testing.assert_close(features, torch.cat(expected), rtol=0, atol=1e-5)


def test_tower_frozen_unless_trainable_and_always_in_eval(images):
    frozen = load_vision_tower("tiny-radio", output_layernorm=True)
    frozen.train()
    assert not frozen.radio.training and not any(p.requires_grad for p in frozen.parameters())
    features = frozen(images[0][None]).last_hidden_state
    torch.testing.assert_close(features.mean(-1), torch.zeros(features.shape[:2]), atol=1e-5, rtol=0)
    trainable = load_vision_tower("tiny-radio", trainable=True).train()
    assert not trainable.radio.training and all(p.requires_grad for p in trainable.parameters())
    first, second = (trainable(images[0][None]).last_hidden_state for _ in range(2))
    torch.testing.assert_close(first, second, atol=0, rtol=0)  # no random position-table crops


def test_save_load_identical_logits_and_generate(tiny, images, tmp_path):
    model, processor = tiny
    model.eval()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_pretrained(tmp_path)
    assert isinstance(loaded.model.vision_tower, RadioLlavaVisionModel)
    inputs = processor(images=images, text=PROMPTS)
    loaded_inputs = loaded_processor(images=images, text=PROMPTS)
    assert all(torch.equal(inputs[k], loaded_inputs[k]) for k in inputs)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**loaded_inputs).logits, model(**inputs).logits, atol=0, rtol=0)
    loaded_processor.tokenizer.padding_side = "left"
    generated = loaded.generate(
        **loaded_processor(images=images, text=PROMPTS), max_new_tokens=3, do_sample=False
    )
    assert generated.shape[0] == 2


def test_processor_rejects_tag_count_mismatch(tiny, images):
    with pytest.raises(ValueError, match="1 <image> tags but 2 images"):
        tiny[1](images=images, text=PROMPTS[0])


def test_local_folders_load_like_the_tiny_twins(tmp_path, images):
    from llava_patch.llm import load_llm
    from radio_vlm.tiny import build_tiny_radio

    build_tiny_radio("tiny-radio").save_pretrained(tmp_path / "radio")  # what `radio-vlm convert` writes
    from_folder = load_vision_tower(str(tmp_path / "radio"), feature_sources=["adaptor:dino_v2"])
    from_twin = load_vision_tower("tiny-radio", feature_sources=["adaptor:dino_v2"])
    with torch.no_grad():
        torch.testing.assert_close(
            from_folder(images[0][None]).last_hidden_state, from_twin(images[0][None]).last_hidden_state
        )
    llm, tokenizer = load_llm("tiny-llama")
    llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    llm_again, tokenizer_again = load_llm(str(tmp_path / "llm"))
    text = "USER: what color is the bus? ASSISTANT: red</s>"
    assert (
        tokenizer_again(text).input_ids == tokenizer(text).input_ids and tokenizer_again.pad_token == "<unk>"
    )
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a tiny twin"):
        load_llm(str(tmp_path / "missing"))
