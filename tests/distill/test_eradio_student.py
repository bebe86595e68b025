"""An E-RADIO student (configs/distill/eradio_tiny.yaml) trains through the CLI, with spectral
reparametrisation, and exports to a RadioWithAdaptors folder that loads with AutoModel and gives the
trained student's numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs/distill/eradio_tiny.yaml"
SMALL = ["train.max_steps=3", "train.log_every=1", "groups.0.batch_size=4", "data.num_images=16",
         "data.eval_images=4", "student.spectral_reparam=true"]  # fmt: skip


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "distill", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.slow
def test_eradio_student_trains_and_exports(tmp_path):
    from transformers import AutoModel

    from distill.export import export_run, load_run_student
    from radio_vlm import ERadioModel

    run = tmp_path / "run"
    sets = [a for o in SMALL for a in ("--set", o)]
    result = _cli("train", "--config", str(CONFIG), "--output-dir", str(run), *sets)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert "cos/tiny_clip/summary" in metrics[-1] and "cos/tiny_sam/features" in metrics[-1]

    exported = AutoModel.from_pretrained(export_run(run, tmp_path / "student")).eval()
    assert isinstance(exported.backbone, ERadioModel)
    assert not any("parametrizations" in k for k in exported.state_dict())  # spectral weights baked
    trained = load_run_student(run).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = trained(images), exported(images)
    torch.testing.assert_close(theirs.features, ours.features, atol=1e-5, rtol=1e-5)
    for name in ("clip", "dino_v2"):  # every summary head reads the one E-RADIO summary
        torch.testing.assert_close(
            theirs.adaptors[name].summary, ours.adaptors[name].summary, atol=1e-5, rtol=1e-5
        )
