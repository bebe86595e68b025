"""`radio-llava convert`: original LLaVA-1.5 checkpoints (made by the real llava-torch package) <->
transformers' LlavaForConditionalGeneration, with identical logits both ways, for a CLIP and a RADIO tower."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlavaForConditionalGeneration,
)

import llava_patch
from llava_patch.cli import main as cli
from llava_patch.convert import read_state_dict, rename
from llava_patch.llm import build_tiny_llama
from llava_patch.processing import RadioLlavaProcessor

IMAGE = -200  # LLaVA's placeholder id


@pytest.fixture(scope="module")
def llava():
    llava_patch.install()
    from llava.model import LlavaConfig, LlavaLlamaForCausalLM

    return LlavaConfig, LlavaLlamaForCausalLM


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """A tiny CLIP vision tower folder, as LLaVA's mm_vision_tower points to (patch 16, 32 px, 4 tokens)."""
    path = tmp_path_factory.mktemp("clip")
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=16,
    )
    torch.manual_seed(1)
    CLIPVisionModel(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        path
    )
    return path


def save_original_llava(llava, tower: str, path: Path, mm_hidden_size: int = 32) -> Path:
    """An original-layout LLaVA-1.5 checkpoint: LLaVA's LlavaLlamaForCausalLM (tiny-llama inside, tower
    loaded, random mlp2x_gelu projector) saved by its own save_pretrained, with the tokenizer."""
    llava_config_class, llava_class = llava
    llm, tokenizer = build_tiny_llama()
    config = llava_config_class(**llm.config.to_dict())
    config.update(
        {
            "mm_vision_tower": tower,
            "mm_vision_select_layer": -2,
            "mm_vision_select_feature": "patch",
            "mm_projector_type": "mlp2x_gelu",
            "mm_hidden_size": mm_hidden_size,
            "mm_patch_merge_type": "flat",
            "image_aspect_ratio": "pad",
            "tokenizer_model_max_length": 2048,
        }
    )
    torch.manual_seed(2)
    model = llava_class(config)
    model.get_vision_tower().load_model()
    model.model.load_state_dict(llm.model.state_dict(), strict=False)
    model.lm_head.load_state_dict(llm.lm_head.state_dict())
    model.save_pretrained(path, max_shard_size="100KB")  # sharded, with model.safetensors.index.json
    tokenizer.save_pretrained(path)
    return path


def original_logits(llava, path: Path, input_ids, pixel_values) -> torch.Tensor:
    model = llava[1].from_pretrained(path).eval()
    model.get_vision_tower().load_model()  # LLaVA's loader does this after from_pretrained
    with torch.no_grad():
        return model(input_ids=input_ids, images=pixel_values).logits


# tower kind -> (tower name, mm_hidden_size, pixel_values size, image tokens)
TOWERS = {
    "clip": (None, 32, (32, 32), 4),  # 2x2 patches, CLS dropped
    "radio": ("radio:tiny-radio:long_edge=48", 32, (32, 48), 6),  # 2x3 patches
    # 2x4 patches -> 1x2 tokens of 4 x 32 channels
    "radio_unshuffle2": ("radio:tiny-radio:long_edge=48,merge=unshuffle2,max_tokens=4", 128, (32, 64), 2),
}


@pytest.mark.parametrize("tower_kind", sorted(TOWERS))
def test_round_trip_identical_logits(llava, clip_dir, tmp_path, tower_kind):
    name, mm_hidden_size, size, num_image_tokens = TOWERS[tower_kind]
    tower = name or str(clip_dir)
    source = save_original_llava(llava, tower, tmp_path / "llava-v1.5-tiny", mm_hidden_size)
    pixel_values = torch.rand(1, 3, *size)
    text = [1, 17, 29, 5]
    input_ids = torch.tensor([text[:2] + [IMAGE] + text[2:]])
    assert (source / "model.safetensors.index.json").is_file()
    reference = original_logits(llava, source, input_ids, pixel_values)

    assert cli(["convert", "--from", "llava", "--to", "hf", str(source), str(tmp_path / "hf")]) == 0
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    config = hf.config
    vocab = reference.shape[-1]
    assert config.image_token_id == vocab and config.text_config.vocab_size == vocab + 1
    layer, strategy = (-2, "default") if tower_kind == "clip" else (-1, "full")
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (layer, strategy)
    hf_ids = torch.tensor([text[:2] + [config.image_token_id] * num_image_tokens + text[2:]])
    with torch.no_grad():
        logits = hf(input_ids=hf_ids, pixel_values=pixel_values).logits
    assert logits.shape[1] == reference.shape[1]
    torch.testing.assert_close(logits[..., :vocab], reference, rtol=0, atol=1e-5)
    if tower_kind.startswith("radio"):  # the converted folder serves with AutoProcessor / pipeline()
        processor = AutoProcessor.from_pretrained(tmp_path / "hf")
        assert isinstance(processor, RadioLlavaProcessor) and processor.image_processor.long_edge == 48
        assert processor.image_token_id == config.image_token_id
    if tower_kind == "radio_unshuffle2":  # the token budget is carried by the transformers-side files
        assert config.vision_config.token_merge == "unshuffle:2"
        image_processor = processor.image_processor
        assert (image_processor.token_merge, image_processor.max_image_tokens) == ("unshuffle:2", 4)

    assert (
        cli(["convert", "--from", "hf", "--to", "llava", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    )
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    before = json.loads((source / "config.json").read_text())
    for key in ("vocab_size", "mm_hidden_size", "mm_vision_select_layer", "image_aspect_ratio", "model_type"):
        assert back[key] == before[key], key
    if tower_kind == "radio_unshuffle2":
        assert back["mm_vision_tower"].endswith(
            ":long_edge=48,feature=layer:-2,merge=unshuffle2,max_tokens=4"
        )
    torch.testing.assert_close(
        original_logits(llava, tmp_path / "back", input_ids, pixel_values), reference, rtol=0, atol=0
    )


def test_projector_round_trip(tmp_path):
    state = {
        "model.mm_projector.0.weight": torch.randn(32, 16),
        "model.mm_projector.0.bias": torch.randn(32),
        "model.mm_projector.2.weight": torch.randn(32, 32),
        "model.mm_projector.2.bias": torch.randn(32),
    }
    (tmp_path / "pretrain").mkdir()
    torch.save(state, tmp_path / "pretrain" / "mm_projector.bin")
    (tmp_path / "pretrain" / "config.json").write_text("{}")  # LLaVA's pretraining writes one beside it
    assert (
        cli(["convert", "--from", "llava", "--to", "hf", str(tmp_path / "pretrain"), str(tmp_path / "hf")])
        == 0
    )
    from safetensors.torch import load_file

    hf = load_file(tmp_path / "hf" / "multi_modal_projector.safetensors")
    assert sorted(hf) == sorted(rename(k, to_hf=True) for k in state)
    assert "model.multi_modal_projector.linear_2.bias" in hf
    hf_file = tmp_path / "hf" / "multi_modal_projector.safetensors"
    assert cli(["convert", "--from", "hf", "--to", "llava", str(hf_file), str(tmp_path / "back")]) == 0
    back = torch.load(tmp_path / "back" / "mm_projector.bin", weights_only=True)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_read_sharded_bin_checkpoint(tmp_path):
    """LLaVA-1.5's released checkpoints are pytorch_model-0000k-of-0000n.bin shards with an index."""
    shards = {
        "pytorch_model-00001-of-00002.bin": {"a": torch.ones(2)},
        "pytorch_model-00002-of-00002.bin": {"b": torch.zeros(3)},
    }
    for name, tensors in shards.items():
        torch.save(tensors, tmp_path / name)
    weight_map = {key: name for name, tensors in shards.items() for key in tensors}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    state = read_state_dict(tmp_path)
    assert sorted(state) == ["a", "b"] and torch.equal(state["b"], torch.zeros(3))


def test_bad_inputs(tmp_path):
    torch.save({"model.layers.0.weight": torch.zeros(1)}, tmp_path / "x.bin")
    with pytest.raises(ValueError, match="expected only projector weights"):
        cli(["convert", "--from", "llava", "--to", "hf", str(tmp_path / "x.bin"), str(tmp_path / "o")])
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    torch.save({}, tmp_path / "ckpt" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="no mm_vision_tower"):
        cli(["convert", "--from", "llava", "--to", "hf", str(tmp_path / "ckpt"), str(tmp_path / "o")])
    with pytest.raises(ValueError, match="has no counterpart"):
        rename("vision_tower.x", to_hf=True)


def test_hf_track_model_to_original_llava(llava, tmp_path):
    """A RADIO-LLaVA built on transformers (llava_patch.model.build, as `radio-llava train` saves it) runs
    in the original codebase after conversion, with the same logits."""
    from llava_patch.model import build

    model, processor = build("tiny-radio", "tiny-llama")
    model.save_pretrained(tmp_path / "hf")
    processor.save_pretrained(tmp_path / "hf")
    pixel_values = torch.rand(1, 3, 48, 32)
    text = [1, 17, 29, 5]
    hf_ids = torch.tensor([text[:1] + [model.config.image_token_id] * 6 + text[1:]])  # 3x2 patches
    with torch.no_grad():
        reference = model.eval()(input_ids=hf_ids, pixel_values=pixel_values).logits

    assert (
        cli(["convert", "--from", "hf", "--to", "llava", str(tmp_path / "hf"), str(tmp_path / "llava-radio")])
        == 0
    )
    logits = original_logits(
        llava, tmp_path / "llava-radio", torch.tensor([text[:1] + [IMAGE] + text[1:]]), pixel_values
    )
    vocab = logits.shape[-1]
    assert vocab == model.config.image_token_id  # the added <image> row is gone again
    tower = json.loads((tmp_path / "llava-radio" / "config.json").read_text())["mm_vision_tower"]
    assert tower.endswith(f":long_edge={processor.image_processor.long_edge},feature=backbone")
    torch.testing.assert_close(logits, reference[..., :vocab], rtol=0, atol=1e-5)
