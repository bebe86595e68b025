"""Comparing a converted model with the official fixtures' expected tensors (`<input>.<kind>` keys)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TOL = 1e-5  # fixture READMEs: max |diff| <= 1e-5 in float32 for every tensor


def model_outputs(model, x: torch.Tensor, kinds: set[str], indices: list[int]) -> dict[str, torch.Tensor]:
    """Every tensor kind the fixture READMEs name that `kinds` asks for, computed once per input."""
    out = {}
    nlc = model(x)
    out["summary"], out["features"] = nlc.summary, nlc.features
    for name, head in nlc.adaptors.items():
        out[f"{name}.summary"], out[f"{name}.features"] = head.summary, head.features
    if any(kind.endswith("features_nchw") for kind in kinds):
        nchw = model(x, feature_fmt="NCHW")
        out["features_nchw"] = nchw.features
        out |= {f"{name}.features_nchw": head.features for name, head in nchw.adaptors.items()}
    for tag, options in (
        ("intermediates_sparse", {"aggregation": "sparse"}),
        ("intermediates_dense", {"aggregation": "dense"}),
        ("intermediates_sparse_norm", {"aggregation": "sparse", "norm": True}),
    ):
        if any(kind.startswith(tag + ".") and not kind.startswith(tag + "_") for kind in kinds):
            layers = model.forward_intermediates(
                x, indices=indices, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True, **options
            )  # fmt: skip
            for index, layer in zip(indices, layers):
                out[f"{tag}.{index}"], out[f"{tag}.{index}.summary"] = layer.features, layer.summary
    if "vitdet_w2.features" in kinds:
        model.set_vitdet(
            2, num_global=2
        )  # how the core fixture was made (README: VitDetArgs(2, 8, num_global=2))
        try:
            windowed = model(x)
        finally:
            model.set_vitdet(None)
        out["vitdet_w2.summary"], out["vitdet_w2.features"] = windowed.summary, windowed.features
    if "video_t2.features" in kinds:  # one clip of 2 frames (README: cpe_video_mode(t=2))
        with model.cpe_video_mode(2):
            video = model(x)
        out["video_t2.summary"], out["video_t2.features"] = video.summary, video.features
    return out


def matches_expected(
    model, expected_file: Path, inputs: dict[str, torch.Tensor], indices: list[int]
) -> tuple[int, float]:
    """Assert every tensor of `expected_file` within TOL; return (tensors checked, max |diff|)."""
    expected = load_file(expected_file)
    by_input: dict[str, dict[str, torch.Tensor]] = {}
    for key in expected:
        name, kind = key.split(".", 1)
        by_input.setdefault(name, {})[kind] = expected[key]
    checked, worst = 0, 0.0
    with torch.no_grad():
        for name, tensors in by_input.items():
            got = model_outputs(model, inputs[name], set(tensors), indices)
            for kind, want in tensors.items():
                assert kind in got, f"{expected_file.name}: {name}.{kind} not computed"
                assert got[kind].shape == want.shape, (
                    f"{name}.{kind}: {tuple(got[kind].shape)} vs {tuple(want.shape)}"
                )
                diff = (got[kind].float() - want).abs().max().item()
                assert diff <= TOL, f"{expected_file.name}: {name}.{kind} differs by {diff:.2e}"
                checked, worst = checked + 1, max(worst, diff)
    return checked, worst


@pytest.fixture(scope="session")
def fixture_match() -> Callable[..., tuple[int, float]]:
    """`fixture_match(model, expected_file, inputs, indices=[1, 3]) -> (tensors checked, max |diff|)`."""

    def check(
        model, expected_file: Path, inputs: dict[str, torch.Tensor], indices=(1, 3)
    ) -> tuple[int, float]:
        return matches_expected(model, expected_file, inputs, list(indices))

    return check


@pytest.fixture(scope="session")
def core_inputs(fixtures_dir) -> dict[str, torch.Tensor]:
    """The core fixtures' images as model inputs, uint8 / 255 (README)."""
    return {
        k: v.float() / 255.0
        for k, v in load_file(fixtures_dir / "radio_reference" / "inputs.safetensors").items()
    }
