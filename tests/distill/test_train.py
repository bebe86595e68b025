"""End to end through the CLI (subprocesses: DeepSpeed owns a process group): a short tiny run writes its
config, metrics, checkpoints, student and final metrics; export loads with AutoModel and gives the
trainer's numbers; a run SIGKILLed in the middle of writing a checkpoint resumes to the same losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs/distill/tiny.yaml"
# A few small steps exercising CPE, ViTDet window sampling, spectral reparametrisation and a balancer
# with learned parameters (they go through DeepSpeed and the checkpoint with the student's).
SMALL = ["train.max_steps=6", "train.log_every=1", "train.save_every=2", "groups.0.batch_size=4",
         "data.num_images=32", "data.eval_images=4", "student.spectral_reparam=true",
         "groups.0.vitdet_window_sizes=[2, 4]", "groups.0.vitdet_num_global=1",
         "loss.balancer=uncertainty"]  # fmt: skip


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        environment.pop(key, None)
    return subprocess.run([sys.executable, "-m", "distill", *args], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _train(out: Path, *flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    sets = [a for o in SMALL for a in ("--set", o)]
    return _cli("train", "--config", str(TINY), "--output-dir", str(out), *flags, *sets, env=env)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("distill") / "run"
    result = _train(run)
    assert result.returncode == 0, result.stderr[-4000:]
    return run


@pytest.mark.slow
def test_short_run_writes_config_metrics_checkpoints_and_final_metrics(tiny_run):
    config = (tiny_run / "config.yaml").read_text()
    assert "max_steps: 6" in config and "spectral_reparam: true" in config  # overrides resolved
    metrics = _metrics(tiny_run)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    for key in (
        "loss",
        "lr",
        "images_per_s",
        "teacher_time_share",
        "cos/tiny_sam/features",
        "loss/tiny_clip/summary",
    ):
        assert key in metrics[-1], key
    assert "cos/tiny_sam/summary" not in metrics[-1]  # SAM has no summary
    assert all(m["skipped_images"] == 0 for m in metrics)  # every synthetic image decodes
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert (tiny_run / "checkpoints/latest").read_text() == "step-00000006"
    assert sorted(p.name for p in (tiny_run / "checkpoints").glob("step-*")) == [
        "step-00000004",
        "step-00000006",
    ]
    final = json.loads((tiny_run / "final_metrics.json").read_text())
    assert set(final["teachers"]) == {"tiny_clip", "tiny_dinov2", "tiny_sam"}
    assert final["teachers"]["tiny_sam"]["summary_cos"] is None
    assert all(-1 <= t["features_cos"] <= 1 for t in final["teachers"].values())


@pytest.mark.slow
def test_export_loads_with_automodel_and_gives_the_trainers_numbers(tiny_run, tmp_path):
    from transformers import AutoModel

    import radio_vlm  # noqa: F401  (registers the model type)
    from distill.batches import build_sources
    from distill.cli import main
    from distill.config import load_config
    from distill.evaluate import evaluate_student
    from distill.export import load_run_student
    from distill.losses import NaiveBalancer
    from distill.teachers import get_teacher_spec, load_teacher

    assert (
        main(["export", str(tiny_run), str(tmp_path / "student")]) == 0
    )  # `radio-distill export`, in-process
    exported = AutoModel.from_pretrained(tmp_path / "student").eval()
    assert sorted(exported.adaptors) == ["clip", "dino_v2", "sam"]
    assert not any("parametrizations" in k for k in exported.state_dict())  # spectral weights baked

    trained = load_run_student(tiny_run).eval()  # spectral parametrisation still live
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = trained(images), exported(images)
    for name in ("clip", "dino_v2", "sam"):
        torch.testing.assert_close(
            theirs.adaptors[name].features, ours.adaptors[name].features, atol=1e-5, rtol=1e-5
        )
    torch.testing.assert_close(
        theirs.adaptors["clip"].summary, ours.adaptors["clip"].summary, atol=1e-5, rtol=1e-5
    )

    # the exported model reproduces the run's final_metrics.json
    config = load_config(tiny_run / "config.yaml")
    teachers = {t.name: load_teacher(get_teacher_spec(t.name), "cpu") for t in config.teachers}
    _, held_out = build_sources(config.data, config.train.seed)
    metrics = evaluate_student(exported, teachers, config, held_out, NaiveBalancer({}), torch.device("cpu"))
    expected = json.loads((tiny_run / "final_metrics.json").read_text())
    for name, values in expected["teachers"].items():
        assert metrics["teachers"][name]["features_cos"] == pytest.approx(values["features_cos"], abs=1e-5)
        if values["summary_cos"] is not None:
            assert metrics["teachers"][name]["summary_cos"] == pytest.approx(values["summary_cos"], abs=1e-5)


@pytest.mark.slow
def test_sigkill_during_checkpoint_then_resume_logs_the_same_losses(tiny_run, tmp_path):
    run = tmp_path / "killed"
    killed = _train(
        run, env={"RADIO_DISTILL_KILL_IN_SAVE": "4"}
    )  # dies after writing step 4, before the rename
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (run / "checkpoints/latest").read_text() == "step-00000002"  # the previous checkpoint stays usable
    assert (run / "checkpoints/.tmp-step-00000004").is_dir()
    resumed = _train(run, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    reference, again = _metrics(tiny_run), _metrics(run)
    assert [m["step"] for m in again] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(reference, again):
        for key in a:
            if key.startswith(("loss", "cos/", "lr")):
                assert b[key] == pytest.approx(a[key], abs=1e-6), (a["step"], key)
