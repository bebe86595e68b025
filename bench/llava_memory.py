"""CPU memory of `radio-llava train` on 2 ranks: DeepSpeed ZeRO-3 (the LLM partitioned while it loads) vs
ZeRO-2 (every rank loads all of it), the baseline measured in the same run.

A random LLaMA of about 305M parameters (hidden 1024, 24 layers) is written to disk first in float16, as
Vicuna's checkpoints are, and passed as `--llm PATH`; it trains in float32 (bf16 on GPUs): a dtype
conversion, so loading materialises the weights (a file already in the training dtype would be
memory-mapped by transformers and cost RSS only as its pages are touched). The tower is the tiny RADIO
twin, the stage is pretrain (the projector trains, the LLM is frozen), 2 optimizer steps of 1 sample per
rank. Each rank of `radio-llava train` logs its peak resident memory (VmHWM) rise over its RSS just
before the model is built: while the model is built, and while it trains (engine set-up + 2 steps).

On a CPU the ZeRO-3 partitions live in host memory (on GPUs, in device memory): zero.Init allocates each
weight whole and keeps a partition, and glibc's default, self-raising mmap threshold leaves the freed
multi-MB blocks in the heap, where they count as RSS. Both runs therefore use a fixed 1 MiB threshold
(MALLOC_MMAP_THRESHOLD_), so RSS measures the tensors; `--default-malloc` measures glibc's default.

    python bench/llava_memory.py            # a table
    python bench/llava_memory.py --json     # the last line is one JSON object

JSON keys: zero3_over_zero2_load_rss_increase (the ranks' summed peak rise while loading, ZeRO-3 over
ZeRO-2; goal <= 0.65, 0.5 is the ideal with 2 ranks), zero3_over_zero2_train_rss_increase (the same
during the 2 steps), zero3_over_zero2_load_rss_increase_worst_rank (the largest rank's rise, ZeRO-3
over ZeRO-2: rank 0 also reads the checkpoint), per-rank rises in GiB, load seconds, and the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
# one line per rank and phase, written by llava_patch.train.log_memory
MEMORY_LINE = re.compile(r"rank (\d+) memory: (load|train) peak RSS [\d.]+ GiB, ([+-][\d.]+) GiB over")
BUILT_LINE = re.compile(r"rank (\d+): model built in ([\d.]+) s")
STAGES = {"zero2": "scripts/zero2.json", "zero3": "scripts/zero3.json"}


def write_llm(out: Path, hidden: int, layers: int) -> int:
    """A random LLaMA (LLaMA-7B's proportions at `hidden` wide) in float16 and the tiny twin's tokenizer
    in `out`; returns its parameter count."""
    from llava_patch.llm import random_llama

    model, tokenizer = random_llama(hidden, layers)
    model.half().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(config: Path, llm: Path, data: Path, out: Path, ranks: int, default_malloc: bool) -> dict:
    """Launch `radio-llava train` under torchrun with DeepSpeed `config`; the ranks' memory lines and
    load times."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
               f"--master_port={free_port()}", "-m", "llava_patch.cli", "train", "--stage", "pretrain",
               "--vision-tower", "tiny-radio", "--llm", str(llm), "--deepspeed", str(config),
               "--data", str(data / "pretrain.json"), "--image-folder", str(data / "images"),
               "--output-dir", str(out), "--long-edge", "64", "--max-steps", "2", "--precision", "fp32",
               "--global-batch-size", str(ranks), "--per-device-batch-size", "1",
               "--dataloader-num-workers", "0", "--save-steps", "1000"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if not default_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = str(2**20)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{config.name} run failed:\n{(result.stdout + result.stderr)[-4000:]}")
    log = result.stdout + result.stderr
    rises: dict[str, list[float]] = {"load": [0.0] * ranks, "train": [0.0] * ranks}
    for rank, phase, gib in MEMORY_LINE.findall(log):
        rises[phase][int(rank)] = float(gib)
    load_s = [0.0] * ranks
    for rank, seconds in BUILT_LINE.findall(log):
        load_s[int(rank)] = float(seconds)
    if len(MEMORY_LINE.findall(log)) != 2 * ranks:
        raise RuntimeError(f"{config.name}: expected {2 * ranks} memory lines in the log:\n{log[-4000:]}")
    return {**rises, "load_s": load_s, "wall_s": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024, help="LLM width (LLaMA-7B's proportions)")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--default-malloc", action="store_true", help="glibc's default mmap threshold")
    parser.add_argument(
        "--zero3-max-live-parameters",
        type=float,
        default=None,
        help="override zero3.json's stage3_max_live_parameters / max_reuse_distance (1e9: more than this LLM)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    from radio_vlm.demo.data import write_training_set

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        params = write_llm(tmp / "llm", args.hidden, args.layers)
        file_gib = sum(f.stat().st_size for f in (tmp / "llm").glob("*.safetensors")) / 2**30
        write_training_set(tmp / "data", random.Random(0), 8)
        print(f"random LLaMA: {params / 1e6:.0f}M parameters, {file_gib:.2f} GiB on disk", flush=True)
        configs = {stage: REPO / path for stage, path in STAGES.items()}
        if args.zero3_max_live_parameters:
            zero3 = json.loads(configs["zero3"].read_text())
            for key in ("stage3_max_live_parameters", "stage3_max_reuse_distance"):
                zero3["zero_optimization"][key] = args.zero3_max_live_parameters
            configs["zero3"] = tmp / "zero3.json"
            configs["zero3"].write_text(json.dumps(zero3))
        runs = {}
        for stage, config in configs.items():  # one after the other: neither run disturbs the other
            runs[stage] = measure(
                config, tmp / "llm", tmp / "data", tmp / stage, args.ranks, args.default_malloc
            )
            print(f"{stage}: done in {runs[stage]['wall_s']:.0f} s", flush=True)

    def ratio(phase: str, reduce=sum) -> float:
        return reduce(runs["zero3"][phase]) / reduce(runs["zero2"][phase])

    print(f"\npeak RSS rise over the RSS before the model is built, GiB ({args.ranks} ranks)")
    print(f"{'':8}" + "".join(f"{f'load r{r}':>10}" for r in range(args.ranks)) + "".join(
        f"{f'train r{r}':>10}" for r in range(args.ranks)) + f"{'load s':>9}")  # fmt: skip
    for stage, run in runs.items():
        cells = "".join(f"{v:>10.3f}" for v in run["load"] + run["train"])
        print(f"{stage:8}{cells}{max(run['load_s']):>9.1f}")
    result = {
        "zero3_over_zero2_load_rss_increase": round(ratio("load"), 4),
        "zero3_over_zero2_train_rss_increase": round(ratio("train"), 4),
        "zero3_over_zero2_load_rss_increase_worst_rank": round(ratio("load", max), 4),
        **{
            f"{stage}_{phase}_rise_gib": run[phase]
            for stage, run in runs.items()
            for phase in ("load", "train")
        },
        **{f"{stage}_load_s": max(run["load_s"]) for stage, run in runs.items()},
        "llm_parameters": params,
        "llm_file_gib": round(file_gib, 3),
        "ranks": args.ranks,
        "malloc_mmap_threshold": "glibc default" if args.default_malloc else "1 MiB",
        "zero3_max_live_parameters": args.zero3_max_live_parameters or "as scripts/zero3.json",
        "load_average": os.getloadavg()[0],
    }
    print(
        f"ZeRO-3 / ZeRO-2, summed over ranks: load {result['zero3_over_zero2_load_rss_increase']:.3f} "
        f"(goal <= 0.65, ideal {1 / args.ranks:.2f}), train {result['zero3_over_zero2_train_rss_increase']:.3f}; "
        f"worst rank, load {result['zero3_over_zero2_load_rss_increase_worst_rank']:.3f}"
    )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
