"""End to end through the CLI (subprocesses: DeepSpeed owns a process group): a short tiny run writes its
config, metrics (also to TensorBoard and W&B, read back with their own readers), checkpoints, student and
final metrics; export loads with AutoModel and gives the trainer's numbers, in the teachers' space for a PHI-S
run; bf16 trains like fp32; a run SIGKILLed from outside resumes to the same losses."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs/distill/tiny.yaml"
# A few small steps exercising CPE, ViTDet window sampling, spectral reparametrisation and a balancer
# with learned parameters (they go through DeepSpeed and the checkpoint with the student's).
SMALL = ["train.max_steps=8", "train.log_every=1", "train.save_every=2", "groups.0.batch_size=4",
         "data.num_images=32", "data.eval_images=4", "student.spectral_reparam=true",
         "groups.0.vitdet_window_sizes=[2, 4]", "groups.0.vitdet_num_global=1",
         "loss.balancer=uncertainty"]  # fmt: skip
BF16 = ["distributed.precision=bf16", "train.report_to=[tensorboard]"]
TERMS = (
    "tiny_clip/summary",
    "tiny_clip/features",
    "tiny_dinov2/summary",
    "tiny_dinov2/features",
    "tiny_sam/features",
)


def _command(out: Path, *flags: str, sets: list[str]) -> list[str]:
    return [sys.executable, "-m", "distill", "train", "--config", str(TINY), "--output-dir", str(out), *flags,
            *[a for o in [*SMALL, *sets] for a in ("--set", o)]]  # fmt: skip


def _env(extra: dict | None = None) -> dict:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(extra or {})}
    for key in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "WANDB_MODE",
        "WANDB_API_KEY",
    ):
        environment.pop(key, None)
    return environment


def _train(out: Path, *flags: str, sets: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(_command(out, *flags, sets=list(sets)), cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _tensorboard(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _wandb_history(run: Path) -> list[dict]:
    """History rows of the run's offline W&B log. The records are wandb's own protobuf `Record`s; the
    container around them is LevelDB's log format (wandb-core's; its Python reader is gone from wandb)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run.glob("wandb/offline-run-*/run-*.wandb")
    data, position, chunk, rows = path.read_bytes(), 7, b"", []  # 7: the ":W&B" header
    while position + 7 <= len(data):
        if (space := 32768 - position % 32768) < 7:  # a block's tail too short for a chunk header
            position += space
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:
            break
        chunk, position = chunk + data[position + 7 : position + 7 + length], position + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        item.key or "/".join(item.nested_key): json.loads(item.value_json)
                        for item in record.history.item
                    }
                )
            chunk = b""
    return rows


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("distill") / "run"
    result = _train(run, sets=["train.report_to=[tensorboard, wandb]"])
    assert result.returncode == 0, result.stderr[-4000:]
    return run


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("distill") / "bf16"
    result = _train(run, sets=BF16)
    assert result.returncode == 0, result.stderr[-4000:]
    return run


@pytest.mark.slow
def test_short_run_writes_config_metrics_checkpoints_and_final_metrics(tiny_run):
    config = (tiny_run / "config.yaml").read_text()
    assert "max_steps: 8" in config and "spectral_reparam: true" in config  # overrides resolved
    metrics = _metrics(tiny_run)
    assert [m["step"] for m in metrics] == list(range(1, 9))
    for key in ("loss", "lr", "grad_norm", "images_per_s", "teacher_time_share", "cos/tiny_sam/features",
                "loss/tiny_clip/summary"):  # fmt: skip
        assert key in metrics[-1], key
    assert "cos/tiny_sam/summary" not in metrics[-1]  # SAM has no summary
    assert all(m["skipped_images"] == 0 for m in metrics)  # every synthetic image decodes
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert (tiny_run / "checkpoints/latest").read_text() == "step-00000008"
    assert sorted(p.name for p in (tiny_run / "checkpoints").glob("step-*")) == [
        "step-00000006",
        "step-00000008",
    ]
    final = json.loads((tiny_run / "final_metrics.json").read_text())
    assert set(final["teachers"]) == {"tiny_clip", "tiny_dinov2", "tiny_sam"}
    assert final["teachers"]["tiny_sam"]["summary_cos"] is None
    assert all(-1 <= t["features_cos"] <= 1 for t in final["teachers"].values())


@pytest.mark.slow
def test_tensorboard_and_wandb_receive_the_scalars_of_metrics_jsonl_and_the_evaluation(tiny_run):
    metrics, final = _metrics(tiny_run), json.loads((tiny_run / "final_metrics.json").read_text())
    keys = ["loss", "lr", "grad_norm", "images_per_s", *(f"{k}/{t}" for t in TERMS for k in ("loss", "cos"))]
    expected = {key: [(m["step"], m[key]) for m in metrics] for key in keys}
    evaluation = {f"eval/teachers/{name}/{field}": value for name, m in final["teachers"].items()
                  for field, value in m.items() if value is not None}  # fmt: skip
    assert len(evaluation) == 5

    board = _tensorboard(tiny_run)
    for key, points in expected.items():
        assert [s for s, _ in board[key]] == [s for s, _ in points], key
        assert [v for _, v in board[key]] == pytest.approx([v for _, v in points], rel=1e-6), key
    for key, value in evaluation.items():
        assert board[key] == [(8, pytest.approx(value, rel=1e-6))], key

    rows = _wandb_history(tiny_run)
    by_step = {row["_step"]: row for row in rows}
    assert sorted(by_step) == list(range(1, 9))
    for key, points in expected.items():
        assert [by_step[s][key] for s, _ in points] == pytest.approx([v for _, v in points], rel=1e-9), key
    for key, value in evaluation.items():
        assert by_step[8][key] == pytest.approx(value, rel=1e-9), key


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
def test_a_phi_s_student_exports_in_the_teachers_space(tmp_path):
    from transformers import AutoModel

    import radio_vlm  # noqa: F401
    from distill.batches import build_sources
    from distill.config import load_config
    from distill.evaluate import evaluate_student
    from distill.export import export_run, load_run_student, run_phi_s
    from distill.losses import NaiveBalancer
    from distill.teachers import get_teacher_spec, load_teacher

    run = tmp_path / "phi_s"
    result = _train(run, sets=["loss.balancer=phi_s", "train.max_steps=4", "train.save_every=4"])
    assert result.returncode == 0, result.stderr[-4000:]
    # statistics from >= 2 x D vectors per term: the 24/32-dim summaries need 64 images, 16 steps of 4
    assert "PHI-S statistics from 16 steps' batches" in result.stderr
    exported = AutoModel.from_pretrained(export_run(run, tmp_path / "student")).eval()
    assert not list((tmp_path / "student").glob("phi_s*"))  # nothing else is needed to use it

    config = load_config(run / "config.yaml")
    teachers = {t.name: load_teacher(get_teacher_spec(t.name), "cpu") for t in config.teachers}
    _, held_out = build_sources(config.data, config.train.seed)
    # plain evaluation of the exported model (no PHI-S anywhere) = the run's own (denormalising) evaluation
    metrics = evaluate_student(exported, teachers, config, held_out, NaiveBalancer({}), torch.device("cpu"))
    expected = json.loads((run / "final_metrics.json").read_text())["teachers"]
    for name, values in expected.items():
        for key, value in values.items():
            got = metrics["teachers"][name][key]
            assert got == value if value is None else got == pytest.approx(value, abs=1e-4), (name, key)
    # and per output: exported head = the trained head's prediction mapped back to the teacher's space
    phi_s, trained = run_phi_s(run), load_run_student(run).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = trained(images).adaptors["clip"], exported(images).adaptors["clip"]
        teacher_space = phi_s.denormalize("tiny_clip/summary", ours.summary)
    torch.testing.assert_close(theirs.summary, teacher_space.float(), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(theirs.summary, ours.summary, atol=1e-2)  # the fold changed the head


@pytest.mark.slow
def test_bf16_trains_on_the_cpu_like_fp32(tiny_run, bf16_run):
    fp32, bf16 = _metrics(tiny_run), _metrics(bf16_run)
    assert [m["step"] for m in bf16] == list(range(1, 9))
    assert bf16[-1]["loss"] < 0.8 * bf16[0]["loss"]
    for a, b in zip(fp32, bf16):  # the same trajectory within bf16's precision
        assert b["loss"] == pytest.approx(a["loss"], rel=0.05), a["step"]
    assert bf16[-1]["loss"] != fp32[-1]["loss"]  # really another precision
    final = json.loads((bf16_run / "final_metrics.json").read_text())["teachers"]
    reference = json.loads((tiny_run / "final_metrics.json").read_text())["teachers"]
    for name, values in reference.items():
        assert final[name]["features_cos"] == pytest.approx(values["features_cos"], abs=0.03), name


@pytest.mark.slow
def test_sigkill_from_outside_then_resume_logs_the_same_losses(bf16_run, tmp_path):
    run = tmp_path / "killed"
    process = subprocess.Popen(_command(run, sets=BF16), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        logged = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
        if len(logged) >= 3:  # past the step-2 checkpoint, in the middle of the run
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert process.wait(timeout=60) == -signal.SIGKILL, process.stderr.read()[-2000:]
    assert not (run / "final_metrics.json").exists()  # it died before the end
    resumed = _train(run, "--resume", sets=BF16)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr
    reference, again = _metrics(bf16_run), _metrics(run)
    assert [m["step"] for m in again] == list(range(1, 9))
    for a, b in zip(reference, again):
        for key in a:
            if key.startswith(("loss", "cos/", "lr", "grad_norm")):
                assert b[key] == pytest.approx(a[key], abs=1e-6), (a["step"], key)
    # TensorBoard: the steps logged again after the checkpoint replace the killed run's (purge_step)
    board = _tensorboard(run)["loss"]
    assert [s for s, _ in board] == list(range(1, 9))
    assert [v for _, v in board] == pytest.approx([m["loss"] for m in reference], abs=1e-6)


def test_a_report_to_backend_that_is_not_installed_names_the_extra(monkeypatch):
    from distill.config import ConfigError
    from distill.reporting import check_backends

    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` sees where it is not installed
    with pytest.raises(
        ConfigError, match=r"'wandb' needs the wandb package: pip install 'radio-vlm\[wandb\]'"
    ):
        check_backends(["tensorboard", "wandb"])


@pytest.mark.slow
def test_a_data_index_with_missing_paths_stops_the_cli_with_one_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "files.txt").write_text("a.jpg\nb.jpg\n")
    result = _train(tmp_path / "run", sets=["data.source=folder", f"data.path={tmp_path / 'images'}",
                                            f"data.index={tmp_path / 'files.txt'}"])  # fmt: skip
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("radio-distill train: error: data.index ") and "2 of 2 entries" in last
    assert "'a.jpg'" in last and "Traceback" not in result.stderr
