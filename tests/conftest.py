"""Shared test helpers: where the official fixtures live (tests/fixtures), deterministic CPU settings, and what a test needs
to launch a child Python (its environment, a free port for torchrun)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The official reference fixtures, copied into the repository (tests/fixtures/README.md says from where)."""
    return FIXTURES_DIR


@pytest.fixture(scope="module")
def subprocess_env() -> dict[str, str]:
    """Environment for a test's child Python: this checkout importable, one OpenMP thread (the suite shares
    2 cores), and no RANK / WORLD_SIZE / MASTER_* that an in-process 1-rank group (distill.engine) may have
    left in os.environ, so a child starts its own group or torchrun sets them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """A function returning a TCP port free on 127.0.0.1 now (torchrun's --master_port for one launch)."""

    def pick() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    return pick


@pytest.fixture(scope="session")
def modules_run() -> Callable:
    """A context manager: `with modules_run(root) as ran:` collects into the set `ran` the names (as in
    `root.named_modules()`) of the submodules of `root` called inside the block."""

    @contextlib.contextmanager
    def record(root):
        ran: set[str] = set()
        hooks = [
            module.register_forward_hook(lambda *_, name=name: ran.add(name))
            for name, module in root.named_modules()
            if name
        ]
        try:
            yield ran
        finally:
            for hook in hooks:
                hook.remove()

    return record


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
