"""`eval:` in a distillation config: the vision protocols run every N steps into metrics.jsonl and at the end into
final_metrics.json, with the same numbers `radio-vlm eval` gives on the exported student; bad sections are
config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.config import ConfigError, load_config
from distill.save_teacher import save_teacher
from radio_vlm.cli import main as radio_vlm_main
from radio_vlm.demo.data import make_demo_data

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs/demo/distill.yaml"


def _eval_sets(vision: Path) -> list[str]:
    return [
        "eval.every=2",
        "eval.batch_size=8",
        f"eval.knn={{train: {vision}/classify/train, val: {vision}/classify/val, k: 5}}",
        f"eval.seg_probe={{data: {vision}/segmentation, steps: 2, crop_size: 32, batch_size: 4}}",
        f"eval.zero_shot_agreement={{teacher: tiny_clip, val: {vision}/classify/val, templates: simple}}",
        f"eval.sam_agreement={{teacher: tiny_sam, annotations: {vision}/coco/annotations/instances_val2017.json, "
        f"images: {vision}/coco/val2017, resolution: 64}}",
    ]


@pytest.mark.slow
def test_vision_metrics_during_and_after_training_equal_radio_vlm_eval(tmp_path):
    data = make_demo_data(tmp_path / "data", seed=2, num_train=40, num_test=2, num_vision=8)
    vision, run = data / "vision", tmp_path / "run"
    sets = ["train.max_steps=4", "train.log_every=3", "groups.0.batch_size=4", "data.eval_images=4",
            f"data.path={data / 'train' / 'images'}", *_eval_sets(vision)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "distill", "train", "--config", str(DEMO), "--output-dir", str(run)]
    result = subprocess.run([*command, *(a for s in sets for a in ("--set", s))], env=env, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 3, 4]  # the step-2 evaluation, then the log lines
    assert {"eval/vision/knn/top1", "eval/vision/seg_probe/miou", "eval/vision/zero_shot_agreement/agreement",
            "eval/vision/sam_agreement/agreement_miou"} <= set(lines[0])  # fmt: skip
    assert "loss" in lines[1] and not any(key.startswith("eval/") for key in lines[1])
    final = json.loads((run / "final_metrics.json").read_text())["vision"]
    assert set(final) == {"knn", "seg_probe", "zero_shot_agreement", "sam_agreement"}

    # the exported student under `radio-vlm eval`, with the teachers written by save-teacher
    teachers = tmp_path / "teachers"
    for name in ("tiny_clip", "tiny_sam"):
        save_teacher(name, teachers / name)
    student = run / "student"
    common = ["--model", str(student), "--workers", "0", "--batch-size", "8"]
    radio_vlm_main(["eval", "knn", *common, "--train", str(vision / "classify/train"), "--val",
                    str(vision / "classify/val"), "--k", "5", "--out", str(tmp_path / "knn")])  # fmt: skip
    radio_vlm_main(["eval", "zero-shot", *common, "--adaptor", "clip", "--text-tower", str(teachers / "tiny_clip"),
                    "--val", str(vision / "classify/val"), "--classnames", "folders", "--templates", "simple",
                    "--agreement-with-teacher", "--out", str(tmp_path / "zs")])  # fmt: skip
    radio_vlm_main(["eval", "sam", *common, "--sam-checkpoint", str(teachers / "tiny_sam"), "--coco",
                    str(vision / "coco"), "--resolution", "64", "--agreement-with-teacher", "--out", str(tmp_path / "sam")])  # fmt: skip
    cli = {
        name: json.loads((tmp_path / name / "metrics.json").read_text())["metrics"]
        for name in ("knn", "zs", "sam")
    }
    assert final["knn"]["top1"] == pytest.approx(cli["knn"]["top1"])
    for key in ("agreement", "logit_correlation", "top1"):
        assert final["zero_shot_agreement"][key] == pytest.approx(cli["zs"][key], abs=1e-4)
    for key in ("agreement_miou", "miou", "teacher_miou"):
        assert final["sam_agreement"][key] == pytest.approx(cli["sam"][key], abs=1e-4)


def test_eval_sections_are_checked(tmp_path):
    with pytest.raises(
        ConfigError, match=r"eval.zero_shot_agreement.teacher: 'clip' is not one of this run's teachers"
    ):
        load_config(DEMO, ["eval.zero_shot_agreement={teacher: clip, val: v}"])
    with pytest.raises(ConfigError, match="eval.every: set at least one of eval.knn"):
        load_config(DEMO, ["eval.every=10"])
    with pytest.raises(ConfigError, match="eval.knn.val"):
        load_config(DEMO, ["eval.knn={train: t}"])
