"""RADIO inside the real original LLaVA package (llava-torch 1.2.2.post1, installed --no-deps): tower
builder, ragged image batches against LLaVA's own code, its training entry point and its generation."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import llava_patch
from llava_patch.compat import rename_flags
from llava_patch.llm import build_tiny_llama
from llava_patch.original import _ORIGINALS
from llava_patch.vision_tower import RadioVisionTower, parse_radio_tower_name

TOWER = "radio:tiny-radio:long_edge=48"


@pytest.fixture(scope="module")
def llava():
    llava_patch.install()
    import llava.model.llava_arch
    import llava.model.multimodal_encoder.builder

    return llava


@pytest.fixture(scope="module")
def tiny_llm_dir(tmp_path_factory) -> Path:
    """tiny-llama (model + SentencePiece tokenizer) saved as an LLM folder, as LLaVA's train() reads one."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model, tokenizer = build_tiny_llama()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_llava(llava, tokenizer_model_max_length=None, padding_side="right", tower=TOWER, mm_hidden_size=32):
    """LLaVA's own LlavaLlamaForCausalLM (tiny LLaMA dims) with the RADIO tower, as after LLaVA's
    initialize_vision_modules (mlp2x_gelu projector, flat patch merge)."""
    from llava.model import LlavaConfig, LlavaLlamaForCausalLM

    config = LlavaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    config.update(
        {
            "mm_vision_tower": tower,
            "mm_vision_select_layer": -1,
            "mm_vision_select_feature": "patch",
            "mm_projector_type": "mlp2x_gelu",
            "mm_hidden_size": mm_hidden_size,
            "mm_patch_merge_type": "flat",
            "tokenizer_padding_side": padding_side,
        }
    )
    if tokenizer_model_max_length:
        config.tokenizer_model_max_length = tokenizer_model_max_length
    model = LlavaLlamaForCausalLM(config)
    model.get_vision_tower().load_model()
    return model.eval()


def test_tower_names_and_errors():
    spec = parse_radio_tower_name("radio:/ckpt/radio-b:long_edge=432,feature=layer:-2+adaptor:clip")
    assert (spec.source, spec.long_edge, spec.feature_sources) == (
        "/ckpt/radio-b",
        432,
        ["layer:-2", "adaptor:clip"],
    )
    assert parse_radio_tower_name("radio:tiny-radio:adaptor=clip").feature_sources == ["adaptor:clip"]
    with pytest.raises(ValueError, match="unknown option 'size=3'"):
        parse_radio_tower_name("radio:tiny-radio:size=3")
    args = types.SimpleNamespace(mm_vision_select_layer=-2, mm_vision_select_feature="patch")
    assert RadioVisionTower("radio:tiny-radio", args, delay_load=True).cfg_only.feature_sources == [
        "layer:-2"
    ]
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        RadioVisionTower("radio:/no/such/radio", args, delay_load=True)
    with pytest.raises(ValueError, match="patch tokens only"):
        RadioVisionTower("radio:tiny-radio", types.SimpleNamespace(mm_vision_select_feature="cls_patch"))
    assert rename_flags(["--evaluation_strategy", "no", "--evaluation_strategy=no"]) == [
        "--eval_strategy",
        "no",
        "--eval_strategy=no",
    ]


def test_token_budget_in_tower_names(llava):
    """merge= and max_tokens= reach the tower (projector width, merged output) and its image processor
    (cap, padding to the merged token), and LLaVA's own model trains on differently sized images with them:
    each row equals that sample alone, with the processor's token count."""
    spec = parse_radio_tower_name("radio:/ckpt/radio-h:long_edge=768,merge=unshuffle2,max_tokens=256")
    assert (spec.long_edge, spec.token_merge, spec.max_image_tokens) == (768, "unshuffle:2", 256)
    assert parse_radio_tower_name("radio:tiny-radio:merge=pool:3").token_merge == "pool:3"
    for name, message in (
        ("radio:tiny-radio:merge=unshuffle0", r"merge='unshuffle0'.*'none', 'unshuffle:s', 'pool:s'"),
        ("radio:tiny-radio:max_tokens=lots", r"max_tokens='lots' is not an integer"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_radio_tower_name(name)
    args = types.SimpleNamespace(mm_vision_select_layer=-1, mm_vision_select_feature="patch")
    with pytest.raises(
        ValueError, match=r"radio:tiny-radio:max_tokens=-1.*max_image_tokens=-1 must be .* >= 1"
    ):
        RadioVisionTower("radio:tiny-radio:max_tokens=-1", args, delay_load=True)
    with pytest.raises(ValueError, match=r"radio:tiny-radio:merge=pool17.*s must be in 2\.\.16"):
        RadioVisionTower("radio:tiny-radio:merge=pool17", args, delay_load=True)

    name = "radio:tiny-radio:long_edge=48,merge=unshuffle2,max_tokens=4"
    model = tiny_llava(llava, tower=name, mm_hidden_size=128)
    tower = model.get_vision_tower()
    processor = tower.image_processor
    assert tower.hidden_size == 128 and (processor.token_merge, processor.max_image_tokens) == (
        "unshuffle:2",
        4,
    )
    assert processor.crop_size == {"height": 64, "width": 64}  # 48 px padded to the 32 px merged token
    photos = [torch.rand(3, 40, 90), torch.rand(3, 100, 30)]
    images = [processor.preprocess(p, return_tensors="pt")["pixel_values"][0] for p in photos]
    counts = [processor.num_image_tokens(*p.shape[-2:]) for p in photos]
    assert [tuple(im.shape[-2:]) for im in images] == [(32, 64), (64, 32)] and counts == [2, 2]
    with torch.no_grad():
        assert [len(f) for f in tower(images)] == counts
        odd = tower(torch.rand(1, 3, 48, 80))  # a 3x5 patch grid: zero tokens pad it to 2x3 merged tokens
    assert odd.shape == (1, 6, 128)
    input_ids, labels, mask = _batch(with_text_only=False)
    out = model(input_ids=input_ids, attention_mask=mask, labels=labels, images=images)
    out.loss.backward()
    assert all(p.grad is not None for p in model.get_model().mm_projector.parameters())
    original = _ORIGINALS["prepare_inputs_labels_for_multimodal"]
    with torch.no_grad():
        for row in range(2):
            n = int(mask[row].sum())
            alone = original(model, input_ids[row : row + 1, :n], None, None, None, None, images[row][None])[
                4
            ]
            assert alone.shape[1] == n - 1 + counts[row]
            torch.testing.assert_close(
                out.logits[row, : alone.shape[1]], model(inputs_embeds=alone).logits[0]
            )


def test_builder_patched_everywhere(llava):
    import llava.model.llava_arch as arch
    import llava.model.multimodal_encoder.builder as builder

    cfg = types.SimpleNamespace(mm_vision_tower=TOWER, mm_vision_select_layer=-1)
    for module in (arch, builder):
        tower = module.build_vision_tower(cfg, delay_load=True)
        assert isinstance(tower, RadioVisionTower) and not tower.is_loaded and tower.hidden_size == 32
    with pytest.raises(ValueError, match="Unknown vision tower"):  # other names: LLaVA's own builder
        builder.build_vision_tower(types.SimpleNamespace(mm_vision_tower="no-such-tower"))


def _batch(with_text_only: bool = True):
    ids = [[1, 5, 6, -200, 7, 8, 9], [1, -200, 10, 11], [1, 12, 13, 14, 15]]
    labels = [[-100, -100, -100, -100, 7, 8, 9], [-100, -100, 10, 11], [-100, 12, 13, 14, 15]]
    ids, labels = (ids, labels) if with_text_only else (ids[:2], labels[:2])
    width = max(len(row) for row in ids)
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    target = torch.tensor([row + [-100] * (width - len(row)) for row in labels])
    mask = torch.tensor([[True] * len(row) + [False] * (width - len(row)) for row in ids])
    return input_ids, target, mask


def test_same_size_batch_matches_original_llava(llava):
    """The replacement gives LLaVA's own result where LLaVA's code works: truncation, text-only rows,
    right and left padding."""
    original = _ORIGINALS["prepare_inputs_labels_for_multimodal"]
    input_ids, labels, mask = _batch()
    images = torch.rand(3, 3, 32, 48)
    for max_length, side in ((None, "right"), (9, "left")):
        model = tiny_llava(llava, max_length, side)
        with torch.no_grad():
            ours = model.prepare_inputs_labels_for_multimodal(input_ids, None, mask, None, labels, images)
            theirs = original(model, input_ids, None, mask, None, labels, images)
            theirs_list = original(model, input_ids, None, mask, None, labels, list(images))
        for a, b, c in zip(ours, theirs, theirs_list):
            assert (a is None and b is None) or torch.equal(a, b), (max_length, side)
            assert (a is None and c is None) or torch.allclose(a.float(), c.float(), atol=1e-6)


def test_differently_sized_images_forward_backward(llava, modules_run):
    """LLaVA's LlavaLlamaForCausalLM with the RADIO tower trains on one batch of differently sized images
    (LLaVA's own code cannot: it torch.cat's them); each row equals that sample run alone through
    LLaVA's original code. The tower reads the backbone's features, so no adaptor head runs."""
    model = tiny_llava(llava)
    input_ids, labels, mask = _batch()
    images = [torch.rand(3, 32, 48), torch.rand(3, 48, 16), torch.zeros(3, 48, 48)]  # last: text-only dummy
    with pytest.raises(RuntimeError):  # what the replacement fixes
        _ORIGINALS["prepare_inputs_labels_for_multimodal"](model, input_ids, None, mask, None, labels, images)

    with modules_run(model.get_vision_tower()) as ran:
        out = model(input_ids=input_ids, attention_mask=mask, labels=labels, images=images)
    assert "vision_tower.radio.backbone.encoder.layer.0" in ran and not [n for n in ran if ".adaptors." in n]
    out.loss.backward()
    projector = model.get_model().mm_projector
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())
    assert all(p.grad is None for p in model.get_vision_tower().parameters())  # frozen, as LLaVA's CLIP

    original = _ORIGINALS["prepare_inputs_labels_for_multimodal"]
    with torch.no_grad():
        for row in range(3):
            n = int(mask[row].sum())
            alone = original(model, input_ids[row : row + 1, :n], None, None, None, None, images[row][None])[
                4
            ]
            logits = model(inputs_embeds=alone).logits[0]
            assert torch.allclose(out.logits[row, : len(logits)], logits, atol=1e-5)
    # image tokens per sample: 3x2 patches at 48x32 px, 3x1 at 16x48 px (patch 16)
    assert out.logits.shape[1] == max(6 + 6, 3 + 3, 5)


def _write_llava_data(root: Path) -> Path:
    """LLaVA-1.5 finetune-format JSON (images of four sizes, multi-turn, one text-only sample) and a
    pretrain-format one (the image samples' first exchange)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    items = []
    for index, (width, height) in enumerate([(40, 24), (24, 56), (32, 32), (48, 40)]):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{index}.png")
        conversations = [
            {"from": "human", "value": "What color is the square?\n<image>"},
            {"from": "gpt", "value": "The square is red."},
            {"from": "human", "value": "Is there a cat?"},
            {"from": "gpt", "value": "No."},
        ]
        items.append({"id": str(index), "image": f"{index}.png", "conversations": conversations})
    items.append(
        {
            "id": "text",
            "conversations": [{"from": "human", "value": "How many?"}, {"from": "gpt", "value": "two"}],
        }
    )
    (root / "train.json").write_text(json.dumps(items))
    pretrain = [{**item, "conversations": item["conversations"][:2]} for item in items if "image" in item]
    (root / "pretrain.json").write_text(json.dumps(pretrain))
    return root


def llava_train_argv(root: Path, out: Path, *flags: str) -> list[str]:
    """`python -m llava_patch.run` arguments running LLaVA's own train() as its scripts launch it."""
    return [
        # --local_rank first, where `deepspeed --module llava_patch.run` puts it
        "--local_rank=-1", "llava.train.train",
        "--image_folder", str(root / "images"), "--vision_tower", TOWER, "--mm_projector_type", "mlp2x_gelu",
        "--mm_vision_select_layer", "-1", "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
        "--output_dir", str(out), "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
        "--evaluation_strategy", "no", "--save_strategy", "no", "--logging_steps", "1", "--report_to", "none",
        "--model_max_length", "256", "--dataloader_num_workers", "0", "--use_cpu", "True", *flags,
    ]  # fmt: skip


# Both stages in one interpreter, one after the other: each is llava_patch.run's main() exactly as
# `python -m llava_patch.run` calls it, and the second stage reads only the files the first one wrote.
# One process instead of two saves a full torch/transformers/LLaVA import (~10 s of CPU).
RUN_STAGES = "import json, sys; from llava_patch.run import main; [main(a) for a in json.loads(sys.argv[1])]"


def run_llava_stages(root: Path, env: dict[str, str], *stages: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", RUN_STAGES, json.dumps(stages)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=root, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "tokenization mismatch" not in result.stdout  # LLaVA's label masking held on every sample
    return result


@pytest.fixture(scope="module")
def llava_data(tmp_path_factory) -> Path:
    return _write_llava_data(tmp_path_factory.mktemp("llava-data"))


@pytest.fixture(scope="module")
def llava_runs(llava_data, tiny_llm_dir, subprocess_env) -> tuple[Path, Path]:
    """Stage 1 as scripts/v1_5/pretrain.sh (`plain` template, projector only, LLaVA writes mm_projector.bin),
    then stage 2 as scripts/v1_5/finetune.sh (vicuna_v1, LLM + projector, from stage 1's projector).

    Returns (stage 1's mm_projector.bin, stage 2's output folder)."""
    pretrain_out = llava_data / "llava-radio-pretrain"
    projector = pretrain_out / "mm_projector.bin"
    finetune_out = llava_data / "llava-radio-tiny"  # LLaVA's loader needs "llava" in the model name
    run_llava_stages(
        llava_data,
        subprocess_env,
        llava_train_argv(
            llava_data, pretrain_out, "--model_name_or_path", str(tiny_llm_dir), "--version", "plain",
            "--data_path", str(llava_data / "pretrain.json"), "--tune_mm_mlp_adapter", "True", "--max_steps", "2",
        ),
        llava_train_argv(
            llava_data, finetune_out, "--model_name_or_path", str(tiny_llm_dir), "--version", "v1",
            "--data_path", str(llava_data / "train.json"), "--pretrain_mm_mlp_adapter", str(projector),
            "--group_by_modality_length", "True", "--max_steps", "3",
        ),
    )  # fmt: skip
    return projector, finetune_out


@pytest.fixture(scope="module")
def pretrained_projector(llava_runs) -> Path:
    return llava_runs[0]


@pytest.fixture(scope="module")
def trained_llava(llava_runs) -> Path:
    return llava_runs[1]


def test_llava_pretrain_stage_projector_converts(pretrained_projector, tmp_path):
    """LLaVA's pretraining output feeds its own finetuning (fixture above) and, converted, the
    transformers track's model (llava_patch.checkpoints.load_projector checks the shapes)."""
    from llava_patch.checkpoints import load_projector
    from llava_patch.cli import main as cli
    from llava_patch.model import build

    state = torch.load(pretrained_projector, weights_only=True)
    assert sorted(state) == [f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("bias", "weight")]
    assert (
        cli(["convert", "--from", "llava", "--to", "hf", str(pretrained_projector.parent), str(tmp_path)])
        == 0
    )
    model, _ = build("tiny-radio", "tiny-llama")
    load_projector(model, tmp_path / "multi_modal_projector.safetensors")
    assert torch.equal(model.model.multi_modal_projector.linear_2.bias, state["model.mm_projector.2.bias"])


def test_llava_train_entry_point(trained_llava):
    state = json.loads((trained_llava / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 3 and len(losses) == 3 and all(np.isfinite(losses))
    config = json.loads((trained_llava / "config.json").read_text())
    assert config["mm_vision_tower"] == TOWER and config["mm_hidden_size"] == 32


def test_llava_generation_answers(llava, trained_llava):
    """LLaVA's loader, prompt building, image processing and generate() answer a question; the answer is
    the greedy continuation computed step by step without a cache."""
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(
        str(trained_llava), None, trained_llava.name, device="cpu"
    )
    model.float()  # LLaVA loads in fp16; fp32 keeps the step-by-step reference free of rounding ties
    assert isinstance(model.get_vision_tower(), RadioVisionTower)
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\nWhat color is the square?")
    conv.append_message(conv.roles[1], None)
    input_ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[
        None
    ]
    image = Image.open(trained_llava.parent / "images" / "1.png").convert("RGB")
    model.config.image_aspect_ratio = "pad"
    images = process_images([image], processor, model.config)
    with torch.inference_mode():
        output = model.generate(
            input_ids, images=images, image_sizes=[image.size], do_sample=False, max_new_tokens=6
        )
        embeds = model.prepare_inputs_labels_for_multimodal(input_ids, None, None, None, None, images)[4]
        greedy = []
        for _ in range(output.shape[1]):
            token = model(inputs_embeds=embeds).logits[0, -1].argmax()
            greedy.append(int(token))
            if token == tokenizer.eos_token_id:
                break
            embeds = torch.cat([embeds, model.get_model().embed_tokens(token)[None, None]], dim=1)
    assert output[0].tolist() == greedy
    assert tokenizer.batch_decode(output, skip_special_tokens=True)[0].strip()
