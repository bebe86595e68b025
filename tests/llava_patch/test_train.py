"""`radio-llava train` end to end with tiny twins: loss goes down, artefacts, resume, LoRA merge, DeepSpeed."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor

from llava_patch.checkpoints import load_projector
from llava_patch.cli import main
from llava_patch.merge_lora import merge_lora
from llava_patch.model import build, load_pretrained
from llava_patch.processing import RadioLlavaProcessor
from radio_vlm.demo.data import write_training_set

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("llava_data")
    write_training_set(root, random.Random(0), 16)
    return root


def train(data: Path, out: Path, stage: str, *extra: str) -> dict:
    json_file = "pretrain.json" if stage == "pretrain" else "finetune.json"
    main(
        ["train", "--stage", stage, "--vision-tower", "tiny-radio", "--llm", "tiny-llama"]
        + ["--data", str(data / json_file), "--image-folder", str(data / "images"), "--output-dir", str(out)]
        + ["--long-edge", "64", "--global-batch-size", "4", "--per-device-batch-size", "4"]
        + ["--dataloader-num-workers", "0", "--save-steps", "1000", *extra]
    )
    return json.loads((out / "trainer_state.json").read_text())


def losses(state: dict) -> list[float]:
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def decrease(curve: list[float]) -> float:
    """Mean loss of the first 5 steps minus that of the last 5 (nats; batch noise is ~0.05 here)."""
    return (sum(curve[:5]) - sum(curve[-5:])) / 5


def test_pretrain_then_finetune_loss_decreases(data, tmp_path):
    state = train(data, tmp_path / "pt", "pretrain", "--max-steps", "30", "--learning-rate", "1e-2")
    curve = losses(state)
    assert len(curve) == 30 and decrease(curve) > 0.2, curve
    projector = torch.load(tmp_path / "pt" / "mm_projector.bin", weights_only=True)
    assert sorted(projector) == [f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("bias", "weight")]
    pretrained, _ = load_pretrained(tmp_path / "pt")
    torch.testing.assert_close(
        projector["model.mm_projector.0.weight"], pretrained.model.multi_modal_projector.linear_1.weight
    )

    fresh, _ = build("tiny-radio", "tiny-llama", long_edge=64)
    for name, weight in fresh.state_dict().items():  # pretraining trained the projector only
        if "multi_modal_projector" not in name:
            torch.testing.assert_close(pretrained.state_dict()[name], weight, atol=0, rtol=0, msg=name)
    load_projector(fresh, tmp_path / "pt")  # what --pretrained-projector does
    torch.testing.assert_close(
        fresh.model.multi_modal_projector.linear_2.bias, projector["model.mm_projector.2.bias"]
    )

    extra = ["--max-steps", "30", "--learning-rate", "1e-3", "--pretrained-projector", str(tmp_path / "pt")]
    curve = losses(train(data, tmp_path / "ft", "finetune", *extra))
    assert decrease(curve) > 0.2, curve


def test_unfrozen_tower_trains(data, tmp_path):
    train(
        data,
        tmp_path / "ft",
        "finetune",
        "--max-steps",
        "2",
        "--learning-rate",
        "1e-3",
        "--unfreeze-vision-tower",
    )
    trained, _ = load_pretrained(tmp_path / "ft")
    fresh, _ = build("tiny-radio", "tiny-llama", long_edge=64)
    before = fresh.model.vision_tower.radio.backbone.encoder.layer[0].state_dict()
    after = trained.model.vision_tower.radio.backbone.encoder.layer[0].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_resume_continues_from_the_last_checkpoint(data, tmp_path):
    out = tmp_path / "ft"
    train(data, out, "finetune", "--max-steps", "2", "--save-steps", "2")
    assert (out / "checkpoint-2").is_dir()
    for folder in (out, out / "checkpoint-2"):  # the processor is saved with the run, for AutoProcessor
        assert isinstance(AutoProcessor.from_pretrained(folder), RadioLlavaProcessor), folder
    state = train(data, out, "finetune", "--max-steps", "3", "--save-steps", "2")
    assert state["global_step"] == 3
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [
        1,
        2,
        3,
    ]  # steps 1-2 from the checkpoint


def test_lora_merge_equals_unmerged(data, tmp_path):
    from peft import PeftModel

    from llava_patch.checkpoints import read_run_config
    from llava_patch.train import build_for_stage

    out = tmp_path / "lora"
    train(
        data, out, "lora", "--max-steps", "3", "--lora-r", "4", "--lora-alpha", "8", "--learning-rate", "1e-2"
    )
    for folder in (out, out / "checkpoint-3"):
        assert (folder / "adapter_model.safetensors").is_file()
        non_lora = torch.load(folder / "non_lora_trainables.bin", weights_only=True)
        assert sorted(non_lora) == [
            f"model.multi_modal_projector.linear_{i}.{p}" for i in (1, 2) for p in ("bias", "weight")
        ]
    merged, processor = merge_lora(out)
    base, _ = build_for_stage({**read_run_config(out), "stage": "base"})
    unmerged = PeftModel.from_pretrained(base, out).eval()
    inputs = processor(images=[torch.rand(3, 40, 64)], text=["USER: <image>\nwhat is it ASSISTANT: a"])
    with torch.no_grad():
        expected = unmerged(**inputs).logits
        with unmerged.disable_adapter():
            untrained = unmerged(**inputs).logits
        torch.testing.assert_close(merged(**inputs).logits, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, untrained, atol=1e-3)  # the adapter changed the model
    merged.save_pretrained(tmp_path / "merged")  # what `radio-llava merge-lora` writes
    processor.save_pretrained(tmp_path / "merged")
    reloaded, _ = load_pretrained(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def zero_runs(
    data, tmp_path_factory, subprocess_env, free_port
) -> dict[int, tuple[Path, subprocess.CompletedProcess]]:
    """ZeRO-2 pretrain then ZeRO-3 finetune (zero_driver.py) under torchrun on 1 and on 2 ranks, both
    launches at once (most of their time is start-up)."""
    driver = Path(__file__).with_name("zero_driver.py")
    launches = {}
    for ranks in (1, 2):
        out = tmp_path_factory.mktemp(f"zero_{ranks}")
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}"]
        command += [f"--master_port={free_port()}", str(driver), str(data), str(out)]
        process = subprocess.Popen(
            command, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        launches[ranks] = (out, process)
    return {
        ranks: (out, process.communicate()[0], process.returncode)
        for ranks, (out, process) in launches.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_deepspeed_zero2_pretrain_then_zero3_finetune(zero_runs, ranks):
    out, log, returncode = zero_runs[ranks]
    assert returncode == 0, log[-4000:]
    for stage in ("zero2", "zero3"):
        state = json.loads((out / stage / "trainer_state.json").read_text())
        assert state["global_step"] == 2 and all(e["loss"] > 0 for e in state["log_history"] if "loss" in e)
    projector = torch.load(out / "zero2" / "mm_projector.bin", weights_only=True)[
        "model.mm_projector.0.weight"
    ]
    finetuned, _ = load_pretrained(out / "zero3")  # ZeRO-3 gathered the full 16-bit weights on save
    weight = finetuned.model.multi_modal_projector.linear_1.weight
    assert weight.shape == projector.shape
    # loaded from the ZeRO-2 projector before partitioning, then 2 steps at lr 1e-3 (Adam: <= ~1e-3 per step)
    assert 0 < (weight - projector).abs().max() < 5e-3


def test_stage_defaults_are_llava_15(monkeypatch):
    import argparse

    from llava_patch.train import add_arguments, resolve_settings

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    paths = ["--vision-tower", "v", "--llm", "l", "--data", "d", "--output-dir", "o"]
    monkeypatch.setenv("WORLD_SIZE", "8")
    pretrain = resolve_settings(parser.parse_args(["--stage", "pretrain", *paths]))
    assert (pretrain["template"], pretrain["learning_rate"], pretrain["global_batch_size"]) == (
        "plain",
        1e-3,
        256,
    )
    assert pretrain["gradient_accumulation_steps"] == 1  # 32 per device x 8 GPUs
    monkeypatch.setenv("WORLD_SIZE", "2")
    lora = resolve_settings(parser.parse_args(["--stage", "lora", *paths]))
    assert (lora["learning_rate"], lora["projector_lr"], lora["lora_r"], lora["lora_alpha"]) == (
        2e-4,
        2e-5,
        128,
        256,
    )
    assert lora["gradient_accumulation_steps"] == 4  # global 128 = 16 per device x 2 GPUs x 4
    assert (lora["warmup_ratio"], lora["lr_scheduler"], lora["weight_decay"], lora["max_length"]) == (
        0.03,
        "cosine",
        0,
        2048,
    )


def test_deepspeed_configs_leave_the_schedule_to_the_trainer():
    for name, stage in [("zero2", 2), ("zero3", 3), ("zero3_offload", 3)]:
        config = json.loads((REPO / "scripts" / f"{name}.json").read_text())
        assert config["zero_optimization"]["stage"] == stage
        assert "scheduler" not in config  # LLaVA's zero3_offload WarmupLR would replace the cosine schedule


def test_training_aborts_past_max_bad_fraction(data, tmp_path):
    from llava_patch.data import TooManyBadSamples

    records = json.loads((data / "finetune.json").read_text())
    for record in records[::2]:  # every other image is missing: found only when the sample loads
        if "image" in record:
            record["image"] = "missing/" + record["image"]
    broken = tmp_path / "data"
    broken.mkdir()
    (broken / "finetune.json").write_text(json.dumps(records))
    (broken / "images").symlink_to(data / "images")
    with pytest.raises(TooManyBadSamples, match=r"missing image \(e\.g\. ids"):
        train(broken, tmp_path / "ft", "finetune", "--max-steps", "8", "--max-bad-fraction", "0.1")
