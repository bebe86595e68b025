"""bench/gpu_smoke.py where there is no CUDA device: one clear line, a JSON line, exit 0 (its CUDA path runs on a
GPU machine; `python bench/gpu_smoke.py --cpu` runs the same steps under gloo)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_smoke_without_a_cuda_device_says_so_and_exits_0(subprocess_env):
    env = {**subprocess_env, "CUDA_VISIBLE_DEVICES": ""}  # hide a GPU, should the suite run on one
    result = subprocess.run([sys.executable, str(REPO / "bench/gpu_smoke.py")], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("no CUDA device:")
    assert json.loads(lines[-1]) == {"cuda": False, "skipped": True}
