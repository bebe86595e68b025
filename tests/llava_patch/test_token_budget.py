"""Token budget: token merges (pixel-unshuffle, pooling) in the RADIO tower, the per-image cap, and the one
token count that the image processor, the LLaVA processor's `<image>` expansion, the tower and LLaVA's own
split agree on (ViT and E-RADIO towers); the settings travel through train, save and generate."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from llava_patch.cli import main
from llava_patch.llm import load_llm
from llava_patch.model import build, build_model, load_pretrained, load_vision_tower, set_token_budget
from llava_patch.processing import RadioLlavaProcessor
from radio_vlm import (
    RadioImageProcessor,
    RadioLlavaVisionConfig,
    RadioLlavaVisionModel,
    RadioWithAdaptors,
    RadioWithAdaptorsConfig,
)
from radio_vlm.demo.data import write_training_set
from radio_vlm.models.token_merge import merge_packed_tokens, merge_tokens, parse_token_merge
from radio_vlm.tiny import tiny_eradio_config, tiny_radio_config

MERGES = ["none", "unshuffle:2", "pool:2", "unshuffle:3"]
# (width, height) px: landscape, portrait, square, extreme aspect, smaller than a patch, larger than long_edge
SIZES = [(64, 48), (48, 64), (40, 40), (64, 20), (20, 64), (96, 30), (7, 5), (300, 170), (50, 61), (17, 90)]


def reference_merge(grid: torch.Tensor, merge: str) -> torch.Tensor:
    """(h, w, D) -> (h', w', D') by the definition, one block at a time: zero tokens outside the grid;
    unshuffle: channel d of token (dy, dx) of the block at index d*s*s + dy*s + dx; pool: the block's mean."""
    kind, s = parse_token_merge(merge)
    if kind == "none":
        return grid
    h, w, width = grid.shape
    rows, cols = -(-h // s), -(-w // s)
    out = torch.zeros(rows, cols, width * s * s if kind == "unshuffle" else width)
    for i in range(rows):
        for j in range(cols):
            block = torch.zeros(s, s, width)
            for dy in range(s):
                for dx in range(s):
                    if i * s + dy < h and j * s + dx < w:
                        block[dy, dx] = grid[i * s + dy, j * s + dx]
            out[i, j] = block.permute(2, 0, 1).reshape(-1) if kind == "unshuffle" else block.mean((0, 1))
    return out


@pytest.fixture(scope="module")
def llm():
    return load_llm("tiny-llama")


def tiny_eradio(seed: int = 0) -> RadioWithAdaptors:
    """A small random E-RADIO (stride-16 features, inputs in multiples of 32) inside RadioWithAdaptors."""
    torch.manual_seed(seed)
    backbone = tiny_eradio_config().to_dict()
    return RadioWithAdaptors(RadioWithAdaptorsConfig(backbone_config=backbone)).eval()


def llava_with(tower: RadioLlavaVisionModel, llm, long_edge: int, max_image_tokens: int | None = None):
    """(LLaVA model, RADIO-LLaVA processor) around `tower`, the processor made as `build` makes it."""
    model, tokenizer = llm
    llava = build_model(tower, model, tokenizer=tokenizer).eval()
    image_processor = RadioImageProcessor.from_model_config(
        tower.config.radio_config,
        long_edge=long_edge,
        token_merge=tower.config.token_merge,
        max_image_tokens=max_image_tokens,
    )
    return llava, RadioLlavaProcessor(tokenizer, image_processor)


def check_counts_agree(llava, processor, images: list[torch.Tensor]) -> list[int]:
    """Every count of the pipeline equals `image_processor.num_image_tokens` of each image's own size:
    the `<image>` expansion, LLaVA's per-image split of the packed tower output, the tower run on the
    image alone; and LLaVA's forward accepts the batch. Returns the counts."""
    expected = [processor.image_processor.num_image_tokens(*im.shape[-2:]) for im in images]
    prompts = [f"USER: <image>\nwhat is {i}? ASSISTANT:" for i in range(len(images))]
    inputs = processor(images=images, text=prompts)
    assert (inputs["input_ids"] == processor.image_token_id).sum(1).tolist() == expected
    tower = llava.model.vision_tower
    with torch.no_grad():
        packed = llava.model.get_image_features(inputs["pixel_values"], image_sizes=inputs["image_sizes"])
        assert [len(f) for f in packed.pooler_output] == expected
        for i, (h, w) in enumerate(inputs["image_sizes"].tolist()):
            alone = tower(inputs["pixel_values"][i : i + 1, :, :h, :w]).last_hidden_state[0]
            assert len(alone) == expected[i] == tower.config.num_image_tokens(h, w)
            projected = llava.model.multi_modal_projector(alone)
            torch.testing.assert_close(packed.pooler_output[i], projected, atol=1e-5, rtol=1e-5)
        logits = llava(**inputs).logits
    assert torch.isfinite(logits).all()
    return expected


@pytest.mark.parametrize("merge", MERGES)
@pytest.mark.parametrize("grid", [(4, 6), (3, 5), (1, 1), (5, 2)])
def test_merge_equals_the_definition(merge, grid):
    features = torch.randn(2, grid[0] * grid[1], 6)
    merged = merge_tokens(features, grid, merge)
    for image in range(2):
        expected = reference_merge(features[image].reshape(*grid, 6), merge)
        torch.testing.assert_close(merged[image], expected.reshape(-1, expected.shape[-1]), atol=1e-6, rtol=0)
    grids = [grid, (2, 3), (3, 1)]
    packed = torch.randn(sum(h * w for h, w in grids), 6)
    chunks = packed.split([h * w for h, w in grids])
    alone = [merge_tokens(c[None], g, merge)[0] for c, g in zip(chunks, grids)]
    torch.testing.assert_close(merge_packed_tokens(packed, grids, merge), torch.cat(alone), atol=0, rtol=0)


@pytest.mark.parametrize("merge", MERGES)
@pytest.mark.parametrize("cap", [None, 6])
def test_vit_counts_agree_over_sizes_merges_and_caps(llm, merge, cap):
    tower = load_vision_tower("tiny-radio-backbone", token_merge=merge)  # no adaptor heads to compute
    llava, processor = llava_with(tower, llm, long_edge=64, max_image_tokens=cap)
    s = tower.config.merge_factor
    assert tower.config.hidden_size == 32 * (s * s if merge.startswith("unshuffle") else 1)
    assert llava.model.multi_modal_projector.linear_1.in_features == tower.config.hidden_size
    assert tower.patch_size == 16 * s  # what LLaVA divides image_sizes by
    generator = torch.Generator().manual_seed(0)
    counts = check_counts_agree(
        llava, processor, [torch.rand(3, h, w, generator=generator) for w, h in SIZES]
    )
    if cap is not None:
        assert max(counts) <= cap
    # a 64x48 photo at long edge 64: 4x3 patches; with s=2 -> 2x2 merged tokens (the grid is padded to 4x4)
    assert counts[0] == {"none": 12, "unshuffle:2": 4, "pool:2": 4, "unshuffle:3": 2}[merge] or cap == 6


@pytest.mark.parametrize("merge", ["unshuffle:2", "pool:2"])
def test_eradio_tower_counts_agree(llm, merge):
    tower = RadioLlavaVisionModel.from_radio(tiny_eradio(), token_merge=merge)
    llava, processor = llava_with(tower, llm, long_edge=64)
    generator = torch.Generator().manual_seed(1)
    images = [torch.rand(3, h, w, generator=generator) for w, h in [(64, 40), (30, 64), (50, 50)]]
    check_counts_agree(llava, processor, images)


@pytest.mark.parametrize("merge", ["unshuffle:3", "pool:3"])
def test_eradio_grids_the_merge_does_not_divide_get_zero_tokens(merge):
    """E-RADIO grids are even (inputs in multiples of 32); s = 3 leaves a remainder: 4x6 and 2x4 patches."""
    radio = tiny_eradio()
    tower, unmerged = (RadioLlavaVisionModel.from_radio(radio, token_merge=m) for m in (merge, "none"))
    pixels, sizes = torch.rand(2, 3, 64, 96), torch.tensor([[64, 96], [32, 64]])
    with torch.no_grad():
        out = tower(pixels, image_sizes=sizes).last_hidden_state[0]
        plain = unmerged(pixels, image_sizes=sizes).last_hidden_state[0]
    grids = [(4, 6), (2, 4)]
    chunks = plain.split([h * w for h, w in grids])
    expected = torch.cat(
        [reference_merge(c.reshape(*g, -1), merge).flatten(0, 1) for c, g in zip(chunks, grids)]
    )
    assert len(out) == 2 * 2 + 1 * 2
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_odd_grids_pad_with_zero_tokens_after_the_layernorm():
    """Dense and packed, a grid that s does not divide gets zero tokens (the output LayerNorm runs before
    the merge, so they stay zero), and each packed image equals that image alone."""
    merged = load_vision_tower("tiny-radio-backbone", output_layernorm=True, token_merge="unshuffle:2")
    plain = load_vision_tower("tiny-radio-backbone", output_layernorm=True)
    assert merged.layernorm.normalized_shape == (32,) and merged.config.hidden_size == 128
    images = [torch.rand(3, 48, 80), torch.rand(3, 64, 32)]  # 3x5 and 4x2 patches
    with torch.no_grad():
        dense = merged(images[0][None]).last_hidden_state[0]
        expected = reference_merge(
            plain(images[0][None]).last_hidden_state[0].reshape(3, 5, 32), "unshuffle:2"
        )
        torch.testing.assert_close(dense, expected.reshape(6, 128), atol=1e-5, rtol=0)
        # token (1, 2) covers patch (2, 4) only: its 3 other slots (dx=1 and dy=1) are zero
        corner = dense.reshape(2, 3, 32, 2, 2)[1, 2]
        assert corner[:, 0, 0].abs().sum() > 0 and (corner[:, 0, 1] == 0).all() and (corner[:, 1] == 0).all()
        batch = torch.zeros(2, 3, 64, 80)
        batch[0, :, :48], batch[1, :, :, :32] = images[0], images[1]
        packed = merged(batch, image_sizes=torch.tensor([[48, 80], [64, 32]])).last_hidden_state[0]
        alone = torch.cat([merged(im[None]).last_hidden_state[0] for im in images])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def test_cap_picks_the_largest_long_edge_that_fits():
    # 640x480 at 432 px is 567 tokens; capped at 256: 288x216 px (padded 288x224) = 18x14 = 252 tokens,
    # while the next step up, 304x228 (padded 304x240) = 19x15 = 285, does not fit
    capped = RadioImageProcessor(long_edge=432, max_image_tokens=256)
    assert capped.get_output_size(480, 640) == ((216, 288), (224, 288))
    assert capped.num_image_tokens(480, 640) == 252
    assert RadioImageProcessor(long_edge=432).num_image_tokens(480, 640) == 567
    for merge in ("none", "unshuffle:2", "pool:3"):
        for cap in (1, 5, 40, 300):
            processor = RadioImageProcessor(long_edge=200, max_image_tokens=cap, token_merge=merge)
            free = RadioImageProcessor(long_edge=200, token_merge=merge)
            for width, height in SIZES:
                (rh, rw), padded = processor.get_output_size(height, width)
                edge = max(rh, rw)
                assert processor.num_padded_image_tokens(*padded) <= cap
                assert edge == 200 or edge % 16 == 0  # long_edge itself, or a multiple of the step below it
                larger = 200 if edge + 16 > 200 else edge + 16
                if larger > edge:  # the next larger candidate would not fit
                    assert free.num_image_tokens(height, width, long_edge=larger) > cap, (merge, cap, width)
                if min(rh, rw) > 1:  # aspect kept up to the rounding of the short side
                    assert abs(rw / rh - width / height) <= (width / height) / min(rh, rw) + 1e-9


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: parse_token_merge("unshuffle:0"),
            r"token_merge='unshuffle:0' is not one of .*s in 2 or more",
        ),
        (lambda: parse_token_merge("unshuffle:1"), r"token_merge='unshuffle:1'"),
        (lambda: parse_token_merge("pool:x"), r"token_merge='pool:x'"),
        (lambda: parse_token_merge("shuffle:2"), r"'none', 'unshuffle:s', 'pool:s'"),
        (
            lambda: RadioLlavaVisionConfig(
                radio_config=tiny_radio_config("tiny-radio"), token_merge="unshuffle:17"
            ),
            r"largest patch grid is 16 x 16 tokens, so s must be in 2\.\.16",
        ),
        (lambda: RadioImageProcessor(max_resolution=256, token_merge="pool:20"), r"s must be in 2\.\.16"),
        (lambda: RadioImageProcessor(max_image_tokens=-1), r"max_image_tokens=-1 must be an integer >= 1"),
        (
            lambda: RadioImageProcessor(max_image_tokens=0, token_merge="unshuffle:2"),
            r"max_image_tokens=0 .* >= 1",
        ),
        (  # E-RADIO's smallest input is 32x32 px = 2x2 patches: a cap of 3 can never be met without a merge
            lambda: RadioImageProcessor.from_model_config(tiny_eradio().config, max_image_tokens=3),
            r"max_image_tokens=3 must be an integer >= 4: the smallest image this model takes \(32x32 px",
        ),
        (lambda: RadioImageProcessor(max_image_tokens=2.5), r"max_image_tokens=2.5 must be an integer"),
        (
            lambda: RadioImageProcessor(resize_mode="nearest_supported", max_image_tokens=100),
            r"needs resize_mode 'long_edge' or 'square'",
        ),
        (lambda: build("tiny-radio", "tiny-llama", token_merge="unshuffle:0"), r"token_merge='unshuffle:0'"),
        (lambda: build("tiny-radio", "tiny-llama", max_image_tokens=-5), r"max_image_tokens=-5"),
    ],
)
def test_bad_settings_name_the_setting_and_the_valid_range(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_trained_model_takes_only_merges_of_its_projector_width(llm):
    tower = load_vision_tower("tiny-radio-backbone", token_merge="pool:2")
    llava, processor = llava_with(tower, llm, long_edge=64)
    set_token_budget(llava, processor, token_merge="none", max_image_tokens=6)  # same width: allowed
    assert llava.model.vision_tower.config.token_merge == llava.config.vision_config.token_merge == "none"
    assert (processor.image_processor.token_merge, processor.image_processor.max_image_tokens) == ("none", 6)
    check_counts_agree(llava, processor, [torch.rand(3, 64, 48), torch.rand(3, 30, 64)])
    with pytest.raises(ValueError, match=r"token_merge='unshuffle:2' gives 128-wide .* projector takes 32"):
        set_token_budget(llava, processor, token_merge="unshuffle:2")
    assert llava.model.vision_tower.config.token_merge == "none"  # nothing changed by the refusal


def test_train_saves_the_budget_and_generate_uses_or_overrides_it(tmp_path):
    data = tmp_path / "data"
    write_training_set(data, random.Random(0), 8)
    out = tmp_path / "run"
    assert (
        main(
            ["train", "--stage", "finetune", "--vision-tower", "tiny-radio-backbone", "--llm", "tiny-llama"]
            + ["--data", str(data / "finetune.json"), "--image-folder", str(data / "images")]
            + ["--output-dir", str(out), "--long-edge", "64", "--token-merge", "unshuffle:2"]
            + ["--max-image-tokens", "3", "--max-steps", "1", "--global-batch-size", "2"]
            + ["--per-device-batch-size", "2", "--dataloader-num-workers", "0", "--save-steps", "1000"]
        )
        == 0
    )
    run = json.loads((out / "radio_llava_run.json").read_text())
    assert (run["token_merge"], run["max_image_tokens"]) == ("unshuffle:2", 3)
    assert json.loads((out / "config.json").read_text())["vision_config"]["token_merge"] == "unshuffle:2"
    saved_processor = json.loads((out / "processor_config.json").read_text())
    assert saved_processor["image_processor"]["max_image_tokens"] == 3
    model, processor = load_pretrained(out)
    assert (
        model.model.vision_tower.config.hidden_size == 128 and processor.image_processor.max_image_tokens == 3
    )

    images = sorted((data / "images").iterdir())[:3]
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        "".join(
            json.dumps({"question_id": i, "image": p.name, "text": "What?"}) + "\n"
            for i, p in enumerate(images)
        )
    )
    generate = ["generate", "--model", str(out), "--question-file", str(questions)]
    generate += ["--image-folder", str(data / "images"), "--max-new-tokens", "2"]
    for extra in ([], ["--max-image-tokens", "1", "--token-merge", "unshuffle:2"]):
        answers = tmp_path / f"answers{len(extra)}.jsonl"
        assert main([*generate, "--answers-file", str(answers), *extra]) == 0
        assert len(answers.read_text().splitlines()) == 3
    with pytest.raises(ValueError, match=r"token_merge='pool:2' gives 32-wide .* projector takes 128"):
        main([*generate, "--answers-file", str(tmp_path / "x.jsonl"), "--token-merge", "pool:2"])


def test_sizes_padded_to_the_merged_token(tmp_path):
    """With a merge the processor pads every side to a multiple of p*s (one merged token), which is what
    keeps transformers' LLaVA split (image_sizes // patch_size) exact; the settings save and load."""
    processor = RadioImageProcessor(long_edge=432, token_merge="unshuffle:2", max_image_tokens=200)
    assert processor.size_step == 32
    for width, height in SIZES:
        _, padded = processor.get_output_size(height, width)
        assert all(side % 32 == 0 for side in padded)
        assert processor.num_padded_image_tokens(*padded) == math.prod(side // 32 for side in padded)
    processor.save_pretrained(tmp_path)
    loaded = RadioImageProcessor.from_pretrained(tmp_path)
    assert (loaded.token_merge, loaded.max_image_tokens) == ("unshuffle:2", 200)
    assert json.loads(Path(tmp_path, "preprocessor_config.json").read_text())["token_merge"] == "unshuffle:2"
