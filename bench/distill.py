"""Distillation step-time breakdown: data, teachers, student forward+backward, optimizer, and the overhead
of the training loop over pure compute, measured by the trainer itself (`radio-distill train`).

    python bench/distill.py                  # a small CPU config, about 1-2 min on 2 cores
    python bench/distill.py --json           # the last line is one JSON object

The run uses configs/distill/tiny.yaml's teachers with a wider student (so compute, not Python, dominates)
and a DataLoader worker (so data loading overlaps compute). The first `--warmup` steps are excluded.

    overhead = step time / (teacher time + student forward+backward time)

i.e. how much slower a step is than the compute it must do (data waits, optimizer, logging, DeepSpeed).
Goal: <= 1.15. JSON keys: images_per_s, overhead, data_s, teachers_s, student_s, optimizer_s, step_s,
teacher_time_share, plus the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40, help="measured steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=10, help="steps excluded from the measurement")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=128, help="student resolution in px")
    parser.add_argument("--hidden", type=int, default=192, help="student width (4 layers, patch 16)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    settings = {"steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size,
                "resolution": args.resolution, "hidden": args.hidden, "layers": 4, "workers": args.workers}  # fmt: skip
    overrides = [
        f"train.max_steps={args.warmup + args.steps}",
        f"train.log_every={args.warmup}" if args.steps % args.warmup == 0 else "train.log_every=1",
        "train.save_every=0",
        f"groups.0.batch_size={args.batch_size}",
        f"groups.0.resolution={args.resolution}",
        f"student.backbone={{hidden_size: {args.hidden}, num_hidden_layers: 4, num_attention_heads: 4, num_registers: 1}}",
        f"data.num_workers={args.workers}",
        "data.eval_images=4",
        "train.keep_checkpoints=1",
    ]
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "distill", "train", "--config", str(REPO / "configs/distill/tiny.yaml"),
                   "--output-dir", out, *[a for o in overrides for a in ("--set", o)]]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stderr[-4000:], file=sys.stderr)
            return result.returncode
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    measured = [r for r in records if r["step"] > args.warmup]
    n = len(measured)
    mean = {
        k: sum(r[k] for r in measured) / n
        for k in ("data_s", "teachers_s", "student_s", "optimizer_s", "step_s")
    }
    images_per_s = sum(r["images_per_s"] for r in measured) / n
    overhead = mean["step_s"] / (mean["teachers_s"] + mean["student_s"])
    results = {"images_per_s": images_per_s, "overhead": overhead, **mean,
               "teacher_time_share": mean["teachers_s"] / mean["step_s"]}  # fmt: skip

    print(f"{'part':<22} {'s/step':>9} {'share':>7}")
    for key in ("data_s", "teachers_s", "student_s", "optimizer_s"):
        print(f"{key[:-2]:<22} {mean[key]:>9.4f} {mean[key] / mean['step_s']:>7.1%}")
    print(f"{'step':<22} {mean['step_s']:>9.4f}")
    print(f"images/s {images_per_s:.1f}; overhead step/(teachers+student) = {overhead:.3f} (goal <= 1.15)")
    if args.json:
        print(json.dumps({**{k: round(v, 5) for k, v in results.items()}, **settings}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
