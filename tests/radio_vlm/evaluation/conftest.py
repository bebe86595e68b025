"""Shared data for the evaluation tests: a small synthetic vision benchmark (radio-vlm demo-data's DIR/vision)
and a tiny RADIO whose adaptor widths match the tiny CLIP (24) and SAM (32) built in the tests."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from radio_vlm.demo.data import make_demo_data
from radio_vlm.tiny import TINY_MODELS, build_tiny_radio

# The tiny CLIP of the tests (the distill registry's tiny_clip architecture): ViT-B-16 at 1/24 width.
TINY_CLIP = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
# A tiny SAM image encoder (the distill registry's tiny_sam): 128 px, patch 16, an 8x8 embedding grid.
TINY_SAM = {"img_size": 128, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2, "window_size": 4,
            "global_attn_indexes": [1], "out_chans": 16}  # fmt: skip


@pytest.fixture(scope="session")
def vision_data(tmp_path_factory) -> Path:
    root = make_demo_data(
        tmp_path_factory.mktemp("vision") / "d", seed=1, num_train=48, num_test=2, num_vision=16
    )
    return root / "vision"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """tiny-radio with a 32-channel sam head (upsampled 2x: an 8x8 grid at 64 px, like TINY_SAM at 128 px)."""
    adaptors = copy.deepcopy(TINY_MODELS["tiny-radio"]["adaptors"])
    adaptors["sam"]["feature"]["output_dim"] = 32
    folder = tmp_path_factory.mktemp("model") / "tiny"
    build_tiny_radio("tiny-radio", adaptors=adaptors).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these tiny models' ops take microseconds, and two OpenMP threads on a shared 2-core
    machine turn each into milliseconds of spinning."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
