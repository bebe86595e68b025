"""Run under torchrun by test_train.py, one launch per world size (most of a launch is start-up):

1. `load_check_rank<r>.json`, first, in a fresh process: the ZeRO-3 finetune model built as `radio-llava
   train` builds it, what ZeRO-3 partitioned while it loaded, and whether the gathered weights equal the
   files they came from (the LLM, the tower, and PROJECTOR as --pretrained-projector);
2. `zero2/`: a ZeRO-2 pretrain, 4 steps with checkpoints at 2 and 4; `zero2_resumed/`: the same run again,
   resumed from a copy of the first one's checkpoint-2;
3. `zero3/`: a ZeRO-3 finetune, 4 steps from the ZeRO-2 projector.

The LLM and the tower are folders (what users pass), so `from_pretrained` runs under `zero.Init`. The
global batch is 4 on every world size (per-device 2: 2 accumulation steps on 1 rank, none on 2).

    python -m torch.distributed.run --nproc_per_node=N zero_driver.py DATA LLM TOWER PROJECTOR OUT
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from llava_patch.cli import main
from llava_patch.model import gathered
from llava_patch.train import add_arguments, build_for_stage, resolve_settings, training_arguments
from radio_vlm import RadioWithAdaptors

REPO = Path(__file__).resolve().parents[2]


def stage_args(stage: str, data: Path, llm: Path, tower: Path, out: Path, *extra: str) -> list[str]:
    json_file = "pretrain.json" if stage == "pretrain" else "finetune.json"
    return ["--stage", stage, "--vision-tower", str(tower), "--llm", str(llm), "--data", str(data / json_file),
            "--image-folder", str(data / "images"), "--output-dir", str(out), "--long-edge", "64",
            "--max-steps", "4", "--global-batch-size", "4", "--per-device-batch-size", "2",
            "--dataloader-num-workers", "0", "--learning-rate", "1e-3", "--max-bad-fraction", "0.15",
            *extra]  # fmt: skip


def load_check(argv: list[str], llm: Path, tower: Path, projector_file: Path) -> dict:
    """Build the finetune model under ZeRO-3 and compare its gathered weights with the files'."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    settings = resolve_settings(parser.parse_args(argv))
    # references, loaded whole before ZeRO-3 is active
    reference = {
        "llm": AutoModelForCausalLM.from_pretrained(llm).state_dict(),
        "tower": RadioWithAdaptors.from_pretrained(tower).state_dict(),
        "projector": torch.load(projector_file, weights_only=True),
    }
    args = training_arguments(settings)  # activates zero.Init for the build, as in `run`
    model, _ = build_for_stage(settings)
    parts = {"llm": ("model.language_model.", "lm_head."), "tower": ("model.vision_tower.",)}
    params = {
        part: {n: p for n, p in model.named_parameters() if n.startswith(keys)}
        for part, keys in parts.items()
    }
    # what zero.Init left whole while it loaded (none of it, if the LLM and tower loaded partitioned)
    check = {
        f"{part}_not_partitioned": [n for n, p in named.items() if not hasattr(p, "ds_id") or p.numel()]
        for part, named in params.items()
    }
    llm_params = [p for p in params["llm"].values() if hasattr(p, "ds_id")]
    check["llm_fraction_on_this_rank"] = sum(p.ds_tensor.numel() for p in llm_params) / sum(
        p.ds_numel for p in llm_params
    )
    with gathered(model.parameters()):
        ours = model.state_dict()
        diffs = {"llm": 0.0, "tower": 0.0, "projector": 0.0}
        for key, value in reference["llm"].items():  # the tokenizer's <image> row comes after the file's
            name = key if key == "lm_head.weight" else "model.language_model." + key.removeprefix("model.")
            diffs["llm"] = max(diffs["llm"], (ours[name][: len(value)] - value).abs().max().item())
        for key, value in reference["tower"].items():
            diffs["tower"] = max(
                diffs["tower"], (ours[f"model.vision_tower.radio.{key}"] - value).abs().max().item()
            )
        for key, value in reference["projector"].items():
            layer, param = key.removeprefix("model.mm_projector.").split(".")
            name = f"model.multi_modal_projector.linear_{1 if layer == '0' else 2}.{param}"
            diffs["projector"] = max(diffs["projector"], (ours[name] - value).abs().max().item())
    check.update({f"max_abs_diff_{part}": diff for part, diff in diffs.items()})
    del model, args
    return check


if __name__ == "__main__":
    data, llm, tower, projector, out = (Path(arg) for arg in sys.argv[1:6])
    zero2, zero3 = str(REPO / "scripts/zero2.json"), str(REPO / "scripts/zero3.json")
    check_args = stage_args("finetune", data, llm, tower, out / "unused", "--deepspeed", zero3)
    check = load_check([*check_args, "--pretrained-projector", str(projector)], llm, tower, projector)
    rank = torch.distributed.get_rank()
    (out / f"load_check_rank{rank}.json").write_text(json.dumps(check))

    pretrain = ["--deepspeed", zero2, "--save-steps", "2", "--save-total-limit", "2"]
    main(["train", *stage_args("pretrain", data, llm, tower, out / "zero2", *pretrain)])
    if rank == 0:
        shutil.copytree(out / "zero2" / "checkpoint-2", out / "zero2_resumed" / "checkpoint-2")
    torch.distributed.barrier()
    main(["train", *stage_args("pretrain", data, llm, tower, out / "zero2_resumed", *pretrain)])
    finetune = ["--deepspeed", zero3, "--pretrained-projector", str(out / "zero2")]
    main(["train", *stage_args("finetune", data, llm, tower, out / "zero3", *finetune)])
