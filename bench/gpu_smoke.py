"""GPU smoke test of distillation (not part of `make test`): the NCCL, bf16 and CUDA paths the CPU suite
cannot reach, on a machine with one CUDA GPU, in under 5 minutes.

    python bench/gpu_smoke.py          # on a GPU machine; prints a table and, last, one JSON line
    python bench/gpu_smoke.py --cpu    # the same steps under gloo on the CPU (checks this script itself)

Without a CUDA device (and without --cpu) it prints "no CUDA device" and exits 0. Each step is the command a
user types, run under `torchrun --nproc_per_node 1` (so the process group is NCCL, world size 1: every
collective of distill/ still runs through NCCL):

1. `nccl_bf16`: configs/distill/tiny.yaml, `precision: bf16`, 20 steps, TensorBoard logging, checkpoints at
   10 and 20: exit 0, the log names the NCCL group and bf16, metrics.jsonl and the TensorBoard events hold
   steps 5..20 with a falling loss, final_metrics.json covers the three teachers, and the exported student
   loads with AutoModel and runs on the GPU in the teachers' dimensions;
2. `resume`: the run resumed from its step-10 checkpoint logs steps 15 and 20 again with the same losses
   (within 1e-3: CUDA kernels need not be bitwise reproducible);
3. `partitioned`: configs/distill/tiny_partitioned.yaml (two groups, ZeRO-2, ViTDet windows) for 10 steps on
   the one GPU (world size 1 runs both groups), with the end-of-run evaluation of all teachers.

Exit status 0 when every step passed, 1 otherwise; the JSON line says which.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs/distill/tiny.yaml"
PARTITIONED = REPO / "configs/distill/tiny_partitioned.yaml"
STEP_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 1 -m distill <args>`, captured."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
               f"--master_port={free_port()}", "-m", "distill", *args]  # fmt: skip
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)


def train(
    config: Path, out: Path, sets: list[str], env: dict[str, str], *flags: str
) -> subprocess.CompletedProcess:
    return torchrun(["train", "--config", str(config), "--output-dir", str(out), *flags,
                     *[a for s in sets for a in ("--set", s)]], env)  # fmt: skip


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def nccl_bf16(tmp: Path, env: dict[str, str], backend: str, device: str) -> dict:
    run = tmp / "nccl_bf16"
    sets = ["train.max_steps=20", "train.log_every=5", "train.save_every=10", "distributed.precision=bf16",
            "train.report_to=[tensorboard]", "data.num_workers=2"]  # fmt: skip
    result = train(TINY, run, sets, env)
    check(result.returncode == 0, f"exit {result.returncode}: {result.stderr[-3000:]}")
    check(f"process group: {backend}, 1 rank(s), device {device}" in result.stderr, "the log names the group")
    check("precision bf16" in result.stderr, "the log names bf16")
    logged = metrics(run)
    check([m["step"] for m in logged] == [5, 10, 15, 20], f"logged steps {[m['step'] for m in logged]}")
    check(logged[-1]["loss"] < logged[0]["loss"], f"loss {logged[0]['loss']:.4f} -> {logged[-1]['loss']:.4f}")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    check([e.step for e in events.Scalars("loss")] == [5, 10, 15, 20], "TensorBoard loss events")
    final = json.loads((run / "final_metrics.json").read_text())
    check(set(final["teachers"]) == {"tiny_clip", "tiny_dinov2", "tiny_sam"}, "final metrics of 3 teachers")

    import torch
    from transformers import AutoModel

    import radio_vlm  # noqa: F401  (registers the model type)

    student = AutoModel.from_pretrained(run / "student").to(device).eval()
    with torch.no_grad():
        out = student(torch.rand(2, 3, 64, 64, device=device))
    check(out.adaptors["clip"].summary.shape == (2, 24) and out.adaptors["sam"].features.shape[-1] == 32,
          "exported student's adaptor shapes")  # fmt: skip
    check(out.summary.device.type == torch.device(device).type, "student ran on the device")
    return {"loss_first": logged[0]["loss"], "loss_last": logged[-1]["loss"],
            "images_per_s": logged[-1]["images_per_s"], "run": run, "sets": sets}  # fmt: skip


def resume(tmp: Path, env: dict[str, str], first: dict) -> dict:
    run = tmp / "resume"
    shutil.copytree(first["run"], run)
    (run / "checkpoints/latest").write_text("step-00000010")
    result = train(TINY, run, first["sets"], env, "--resume")
    check(result.returncode == 0, f"exit {result.returncode}: {result.stderr[-3000:]}")
    check("resumed from" in result.stderr and "at step 10" in result.stderr, "resumed at step 10")
    again, reference = metrics(run), metrics(first["run"])
    check([m["step"] for m in again] == [5, 10, 15, 20], f"logged steps {[m['step'] for m in again]}")
    worst = max(abs(a["loss"] - b["loss"]) for a, b in zip(reference, again))
    check(worst <= 1e-3, f"resumed losses differ by {worst:.2e}")
    return {"max_loss_difference": worst}


def partitioned(tmp: Path, env: dict[str, str]) -> dict:
    run = tmp / "partitioned"
    result = train(PARTITIONED, run, ["train.max_steps=10", "train.log_every=5", "train.save_every=0"], env)
    check(result.returncode == 0, f"exit {result.returncode}: {result.stderr[-3000:]}")
    logged = metrics(run)
    check([m["step"] for m in logged] == [5, 10], f"logged steps {[m['step'] for m in logged]}")
    check("cos/tiny_sam/features" in logged[-1] and "cos/tiny_clip/summary" in logged[-1], "both groups ran")
    final = json.loads((run / "final_metrics.json").read_text())
    check(set(final["teachers"]) == {"tiny_clip", "tiny_dinov2", "tiny_sam"}, "final metrics of 3 teachers")
    return {"loss_last": logged[-1]["loss"]}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu", action="store_true", help="run the same steps under gloo on the CPU")
    args = parser.parse_args()

    import torch

    if not args.cpu and not torch.cuda.is_available():
        print(
            "no CUDA device: the GPU smoke test needs one CUDA GPU; skipped (--cpu runs its steps on the CPU)"
        )
        print(json.dumps({"cuda": False, "skipped": True}))
        return 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4")}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    backend, device = ("gloo", "cpu") if args.cpu else ("nccl", "cuda:0")
    report: dict = {"cuda": not args.cpu, "device": "cpu" if args.cpu else torch.cuda.get_device_name(0)}
    start, results = time.perf_counter(), {}
    with tempfile.TemporaryDirectory() as tmp:
        steps = [("nccl_bf16", lambda: nccl_bf16(Path(tmp), env, backend, device)),
                 ("resume", lambda: resume(Path(tmp), env, results["nccl_bf16"])),
                 ("partitioned", lambda: partitioned(Path(tmp), env))]  # fmt: skip
        for name, step in steps:
            t0 = time.perf_counter()
            try:
                results[name] = step()
                report[name] = True
                detail = ", ".join(f"{k} {v:.4g}" for k, v in results[name].items() if isinstance(v, float))
            except (AssertionError, subprocess.TimeoutExpired, KeyError, ValueError, OSError) as error:
                results[name], report[name], detail = {}, False, f"FAILED: {str(error)[-600:]}"
            print(
                f"{name:<12} {'ok' if report[name] else 'FAILED':<7} {time.perf_counter() - t0:6.1f} s  {detail}"
            )
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report))
    return 0 if all(report[name] for name, _ in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
