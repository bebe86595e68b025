"""Shared test helpers: where the official fixtures live, and deterministic CPU settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The project's read-only `shared/` folder: beside the checkout (CI and sessions), or $RADIO_VLM_SHARED."""
    return Path(os.environ.get("RADIO_VLM_SHARED", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    path = shared_dir() / "fixtures"
    if not path.is_dir():
        pytest.fail(f"official fixtures not found at {path}: set RADIO_VLM_SHARED to the shared/ folder")
    return path


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
