"""`radio-llava train` end to end with tiny twins: loss goes down, artefacts, resume, LoRA merge, DeepSpeed."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor

from llava_patch.checkpoints import BAD_SAMPLES_FILE, load_projector, save_projector
from llava_patch.cli import main
from llava_patch.llm import build_tiny_llama
from llava_patch.merge_lora import merge_lora
from llava_patch.model import build, load_pretrained
from llava_patch.processing import RadioLlavaProcessor
from radio_vlm.demo.data import write_training_set
from radio_vlm.tiny import build_tiny_radio

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
    # as LLaVA: the projector and the config, not the frozen LLM and tower
    assert (tmp_path / "pt" / "config.json").is_file() and not list((tmp_path / "pt").glob("*.safetensors"))
    projector = torch.load(tmp_path / "pt" / "mm_projector.bin", weights_only=True)
    assert sorted(projector) == [f"model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("bias", "weight")]
    fresh, _ = build("tiny-radio", "tiny-llama", long_edge=64)
    assert (
        load_projector(fresh, tmp_path / "pt") == tmp_path / "pt" / "mm_projector.bin"
    )  # --pretrained-projector
    for i, linear in ((0, "linear_1"), (2, "linear_2")):
        weight = getattr(fresh.model.multi_modal_projector, linear).weight
        torch.testing.assert_close(weight, projector[f"model.mm_projector.{i}.weight"], atol=0, rtol=0)

    extra = ["--max-steps", "30", "--learning-rate", "1e-3", "--pretrained-projector", str(tmp_path / "pt")]
    curve = losses(train(data, tmp_path / "ft", "finetune", *extra))
    assert decrease(curve) > 0.2, curve


def test_pretrain_checkpoints_hold_what_resume_needs_and_no_llm(data, tmp_path):
    args = ["--max-steps", "4", "--save-steps", "2", "--save-total-limit", "2", "--learning-rate", "1e-2"]
    whole = train(data, tmp_path / "whole", "pretrain", *args)
    checkpoint = tmp_path / "whole" / "checkpoint-2"
    files = {p.name for p in checkpoint.iterdir()}
    assert {"mm_projector.bin", "config.json", "optimizer.pt", "scheduler.pt", "rng_state.pth"} <= files
    assert "trainer_state.json" in files and not [
        f for f in files if f.endswith((".safetensors", "model.bin"))
    ]
    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoint-2")  # as if killed after step 2
    resumed = train(data, tmp_path / "resumed", "pretrain", *args)
    assert losses(resumed) == losses(whole)
    for run in ("whole", "resumed"):
        projector = torch.load(tmp_path / run / "mm_projector.bin", weights_only=True)
        if run == "whole":
            expected = projector
        for key, value in projector.items():
            torch.testing.assert_close(value, expected[key], atol=0, rtol=0)


def test_a_float16_checkpoint_trains_with_float32_weights_without_deepspeed(data, tmp_path):
    """Vicuna's config says float16; without DeepSpeed the weights are fp32 and bf16 is autocast."""
    from transformers import AutoModelForCausalLM

    llm, tokenizer = build_tiny_llama()
    llm.half().save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    assert json.loads((tmp_path / "llm" / "config.json").read_text())["dtype"] == "float16"
    extra = [
        "--llm",
        str(tmp_path / "llm"),
        "--precision",
        "bf16",
        "--max-steps",
        "2",
        "--learning-rate",
        "1e-3",
    ]
    train(data, tmp_path / "ft", "finetune", *extra)
    run = json.loads((tmp_path / "ft" / "radio_llava_run.json").read_text())
    assert run["dtypes"] == {
        "weights": {"vision_tower": "float32", "projector": "float32", "language_model": "float32"},
        "autocast": "bfloat16",
        "deepspeed_master_weights": None,
    }
    trained = load_file(tmp_path / "ft" / "model.safetensors")
    assert {str(v.dtype) for v in trained.values() if v.is_floating_point()} == {"torch.float32"}
    before = AutoModelForCausalLM.from_pretrained(tmp_path / "llm").model.layers[0].self_attn.q_proj.weight
    finetuned, _ = load_pretrained(tmp_path / "ft")
    after = finetuned.model.language_model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(after.half(), before)  # it trained


def test_a_projector_that_does_not_fit_names_the_file_tensor_and_both_shapes(tmp_path):
    other, _ = build("tiny-radio", "tiny-llama", feature_sources=["adaptor:dino_v2"], long_edge=64)
    path = save_projector(other.model.multi_modal_projector, tmp_path)  # from 40-wide dino_v2 features
    model, _ = build("tiny-radio", "tiny-llama", long_edge=64)  # 32-wide backbone features
    expected = (
        f"{path}: tensor model.mm_projector.0.weight has shape (32, 40) but this model's projector needs"
    )
    expected += " (32, 32)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_projector(model, tmp_path)


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


# 1 rank and 2 ranks see the same global batches in the same order (fp32 on the CPU): the losses agree to
# float32 rounding of differently ordered sums, measured 0.0 (bit-identical) on this machine
RANKS_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def zero_runs(data, tmp_path_factory, subprocess_env, free_port) -> dict[int, Path]:
    """zero_driver.py under torchrun on 1 and on 2 ranks, both launches at once (most of their time is
    start-up), with the LLM and the tower as folders and a finetune set of 16 samples, 2 of them (adjacent)
    with a missing image; 4 steps of 4 samples are one epoch, so every sample is drawn."""
    root = tmp_path_factory.mktemp("zero")
    llm, tokenizer = build_tiny_llama()
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    build_tiny_radio("tiny-radio").save_pretrained(root / "tower")
    save_projector(build("tiny-radio", "tiny-llama")[0].model.multi_modal_projector, root)
    (root / "data").mkdir()
    (root / "data" / "images").symlink_to(data / "images")
    (root / "data" / "pretrain.json").write_text((data / "pretrain.json").read_text())
    records = json.loads((data / "finetune.json").read_text())[:16]
    for i in (3, 4):
        records[i]["image"] = "missing/" + records[i]["image"]
    (root / "data" / "finetune.json").write_text(json.dumps(records))
    driver = Path(__file__).with_name("zero_driver.py")
    launches = {}
    for ranks in (1, 2):
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}"]
        command += [f"--master_port={free_port()}", str(driver)]
        command += [str(root / x) for x in ("data", "llm", "tower", "mm_projector.bin", f"ranks_{ranks}")]
        (root / f"ranks_{ranks}").mkdir()
        log = (root / f"ranks_{ranks}.log").open("w")
        process = subprocess.Popen(command, env=subprocess_env, stdout=log, stderr=subprocess.STDOUT)
        launches[ranks] = (process, log)
    for ranks, (process, log) in launches.items():
        returncode = process.wait(timeout=900)
        log.close()
        assert returncode == 0, (root / f"ranks_{ranks}.log").read_text()[-4000:]
    return {ranks: root / f"ranks_{ranks}" for ranks in launches}


def test_multi_rank_training_equals_one_rank(zero_runs):
    """The same global batch of 4 on 1 rank (2 x 2 accumulated) and on 2 ranks (2 each) gives the same
    loss trajectory, under ZeRO-2 (pretrain) and ZeRO-3 (finetune, with bad samples replaced)."""
    for stage in ("zero2", "zero3"):
        one, two = (
            losses(json.loads((zero_runs[r] / stage / "trainer_state.json").read_text())) for r in (1, 2)
        )
        assert len(one) == 4 and len(set(one)) == 4, one  # four different batches
        assert max(abs(a - b) for a, b in zip(one, two)) <= RANKS_TOLERANCE, (stage, one, two)


@pytest.mark.parametrize("ranks", [1, 2])
def test_zero3_loads_partitioned_and_finetunes_the_llm(zero_runs, ranks):
    for rank in range(ranks):
        check = json.loads((zero_runs[ranks] / f"load_check_rank{rank}.json").read_text())
        # zero.Init partitioned the LLM and tower folders while they loaded; only the embeddings that
        # transformers' resize_token_embeddings rebuilt for <image> wait for the engine to partition them
        assert check["tower_not_partitioned"] == []
        assert check["llm_not_partitioned"] == ["model.language_model.embed_tokens.weight", "lm_head.weight"]
        assert check["llm_fraction_on_this_rank"] == pytest.approx(1 / ranks, abs=0.02)
        # gathered, the weights are the files' (LLM, tower, --pretrained-projector)
        assert (
            check["max_abs_diff_llm"] == check["max_abs_diff_tower"] == check["max_abs_diff_projector"] == 0
        )
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(zero_runs[ranks].parent / "llm").state_dict()
    finetuned, _ = load_pretrained(zero_runs[ranks] / "zero3")  # ZeRO-3 gathered the weights on save
    after = {"lm_head.weight": finetuned.lm_head.weight}
    after |= {f"model.{k}": v for k, v in finetuned.model.language_model.state_dict().items()}
    weights = [k for k in before if k.endswith(("proj.weight", "embed_tokens.weight", "lm_head.weight"))]
    unchanged = [k for k in weights if torch.equal(after[k][: len(before[k])], before[k])]
    assert len(weights) == 2 * 7 + 2 and not unchanged, unchanged  # every linear layer of both blocks


@pytest.mark.parametrize("ranks", [1, 2])
def test_zero2_pretrain_checkpoints_the_projector_alone_and_resumes(zero_runs, ranks):
    out = zero_runs[ranks]
    engine_states = out / "zero2" / "checkpoint-2" / "global_step2" / "mp_rank_00_model_states.pt"
    module = torch.load(engine_states, weights_only=True)["module"]
    assert not [k for k in module if "language_model" in k or "lm_head" in k]  # no frozen LLM weights
    assert sorted(k for k in module if "projector" in k) == [
        f"model.multi_modal_projector.linear_{i}.{p}" for i in (1, 2) for p in ("bias", "weight")
    ]
    assert not list((out / "zero2").glob("*.safetensors"))  # the output too: mm_projector.bin, no LLM
    whole, resumed = (
        json.loads((out / run / "trainer_state.json").read_text()) for run in ("zero2", "zero2_resumed")
    )
    assert losses(resumed) == losses(whole)  # steps 3-4 after the resume are those of the whole run
    projectors = [
        torch.load(out / run / "mm_projector.bin", weights_only=True) for run in ("zero2", "zero2_resumed")
    ]
    for key, value in projectors[0].items():
        torch.testing.assert_close(projectors[1][key], value, atol=0, rtol=0)


@pytest.mark.parametrize("ranks", [1, 2])
def test_bad_samples_are_counted_once_over_ranks(zero_runs, ranks):
    bad = json.loads((zero_runs[ranks] / "zero3" / BAD_SAMPLES_FILE).read_text())
    assert bad["total"] == 16
    assert [(e["position"], e["id"], e["reason"]) for e in bad["bad"]] == [
        (3, "ft00000_6", "missing image"),
        (4, "ft00000_8", "missing image"),
    ]


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


def broken_data(data: Path, root: Path, positions: list[int], size: int | None = None) -> Path:
    """`data`'s finetune set (its first `size` records) with the images of `positions` missing: found
    bad only when the sample loads."""
    records = json.loads((data / "finetune.json").read_text())[:size]
    for i in positions:
        records[i]["image"] = "missing/" + records[i]["image"]
    root.mkdir()
    (root / "finetune.json").write_text(json.dumps(records))
    (root / "images").symlink_to(data / "images")
    return root


def test_training_aborts_past_max_bad_fraction(data, tmp_path):
    from llava_patch.data import TooManyBadSamples

    records = json.loads((data / "finetune.json").read_text())
    every_other = [i for i, record in enumerate(records) if i % 2 == 0 and "image" in record]
    broken = broken_data(data, tmp_path / "data", every_other)
    with pytest.raises(TooManyBadSamples, match=r"of 82 samples are bad:\n  \d+ x missing image \(ids ft"):
        train(broken, tmp_path / "ft", "finetune", "--max-steps", "8", "--max-bad-fraction", "0.1")
    bad = json.loads((tmp_path / "ft" / BAD_SAMPLES_FILE).read_text())["bad"]  # written on the abort
    assert len(bad) == len({e["position"] for e in bad}) > 0.1 * 82


def test_two_bad_samples_of_63_are_counted_once_over_epochs_and_workers(data, tmp_path):
    """The issue's case: 2 bad of 63 (3%), drawn in every epoch, by two DataLoader workers, the second also as
    the stand-in of the first; counted per read this aborted a run at --max-bad-fraction 0.1."""
    broken = broken_data(data, tmp_path / "data", [3, 4], size=63)
    extra = ["--num-train-epochs", "3", "--dataloader-num-workers", "2", "--max-bad-fraction", "0.04"]
    train(
        broken,
        tmp_path / "ft",
        "finetune",
        "--global-batch-size",
        "21",
        "--per-device-batch-size",
        "21",
        *extra,
    )
    bad = json.loads((tmp_path / "ft" / BAD_SAMPLES_FILE).read_text())
    assert bad["total"] == 63 and [(e["position"], e["id"]) for e in bad["bad"]] == [
        (3, "ft00000_6"),
        (4, "ft00000_8"),
    ]
