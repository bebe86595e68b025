"""Throughput of E-RADIO-L vs the ViT-H/16 RADIO backbone at the same input resolution (AM-RADIO 5.1).

The paper pairs E-RADIO-L (391 M parameters) with ViT-H/16 (RADIO, 653 M) and reports E-RADIO at least
6x faster than ViT teachers at matched resolution on an A100 with TensorRT. On a CPU both models are scaled
down by one common width factor (default 4: E-RADIO dim 192 -> 48, neck 1536 -> 384, cpb MLP 512 -> 128;
ViT width 1280 -> 320), keeping every depth, head count, window (16) and the 16 px patch, so the ratio
still compares the two architectures. With a GPU the full-size models also run (bf16 autocast).

Both models are randomly initialised and in eval mode; E-RADIO runs after `switch_to_deploy()` (BatchNorms
folded, position bias cached), as the official benchmark does. The ViT is transformers' RadioModel with
RADIOv2.5-H's prefix (4 CLS + 4 registers, radio_official.md 4.2). Timings are interleaved (A, B, A, B, ...)
and the median is reported, so machine load hits both models alike; on a shared CPU wall time is still
noisy (E-RADIO's many small kernels suffer more from oversubscribed cores than the ViT's large matmuls), so
the CPU-time ratio is reported too.

    python bench/eradio.py                      # width / 4 at 512 px, batch 1, CPU (~1-2 min on 2 cores)
    python bench/eradio.py --json               # the last line is one JSON object

JSON keys: eradio_vs_vit_speedup (E-RADIO images/s over ViT images/s in wall time, at the scaled size),
eradio_vs_vit_speedup_cpu_time (the same on process CPU time, CPU runs), plus
eradio_vs_vit_speedup_full_size when a GPU ran the full-size models, images/s, GFLOPs and settings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import RadioConfig, RadioModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from bench.tower import time_calls  # noqa: E402
from radio_vlm.models.configuration_eradio import ERadioConfig  # noqa: E402
from radio_vlm.models.modeling_eradio import ERadioModel  # noqa: E402

# E-RADIO-L = ERadioConfig's defaults = official `eradio` (radio_official.md section 5); the widths scaled:
ERADIO_WIDTHS = ("dim", "in_dim", "full_features_head_dim", "cpb_mlp_hidden")
# ViT-H/16 (radio_official.md section 0)
VIT_H = {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16}


def build_models(width_factor: int) -> tuple[ERadioModel, RadioModel]:
    """E-RADIO-L (deployed) and ViT-H/16 with every width divided by `width_factor`, depths and heads kept."""
    large = ERadioConfig()
    eradio = ERadioModel(ERadioConfig(**{k: getattr(large, k) // width_factor for k in ERADIO_WIDTHS})).eval()
    eradio.switch_to_deploy()
    width = VIT_H["hidden_size"] // width_factor
    vit = RadioModel(
        RadioConfig(
            **{**VIT_H, "hidden_size": width},
            intermediate_size=4 * width,
            patch_size=16,
            num_cls_tokens=4,
            num_registers=4,
            summary_idxs=[0, 1, 2, 3],
        )  # fmt: skip
    ).eval()
    return eradio, vit


def gflops(width_factor: int, resolution: int) -> dict[str, float]:
    """Forward GFLOPs (2 per multiply-add) of one image, counted on the meta device, where attention runs
    as plain matmuls that FlopCounterMode sees (the CPU's fused attention kernel is not counted)."""
    with torch.device("meta"):
        models = dict(zip(("eradio", "vit"), build_models(width_factor)))
        images = torch.empty(1, 3, resolution, resolution)
    result = {}
    for name, model in models.items():
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(images)
        result[f"{name}_gflops"] = counter.get_total_flops() / 1e9
        result[f"{name}_params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    return result


def measure(width_factor: int, resolution: int, batch: int, repeats: int, device: str) -> dict[str, float]:
    eradio, vit = build_models(width_factor)
    eradio, vit = eradio.to(device), vit.to(device)
    images = torch.rand(batch, 3, resolution, resolution, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()

    def run(model):
        with autocast:
            model(images)
        if device == "cuda":
            torch.cuda.synchronize()

    # {name: (median wall s, median process CPU s)}; CPU time is steadier on a shared machine
    seconds = time_calls({"eradio": lambda: run(eradio), "vit": lambda: run(vit)}, repeats, warmup=2)
    (eradio_wall, eradio_cpu), (vit_wall, vit_cpu) = seconds["eradio"], seconds["vit"]
    result = {
        "eradio_images_per_s": batch / eradio_wall,
        "vit_images_per_s": batch / vit_wall,
        "eradio_vs_vit_speedup": vit_wall / eradio_wall,
        **gflops(width_factor, resolution),
    }
    if device == "cpu":  # process time does not see GPU work
        result["eradio_vs_vit_speedup_cpu_time"] = vit_cpu / eradio_cpu
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width-factor", type=int, default=4, help="divide every width by this (default 4)")
    parser.add_argument("--resolution", type=int, default=512, help="square input side in px (default 512)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repeats per model; the median is reported"
    )
    parser.add_argument(
        "--full-batch", type=int, default=16, help="batch of the full-size GPU run (default 16)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    if args.resolution % 32:
        parser.error(f"--resolution {args.resolution} must be a multiple of 32 (E-RADIO's step)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    runs = {
        f"width/{args.width_factor}": measure(
            args.width_factor, args.resolution, args.batch, args.repeats, device
        )
    }
    if device == "cuda":
        runs["full size"] = measure(1, args.resolution, args.full_batch, args.repeats, device)

    print(f"E-RADIO-L vs ViT-H/16 RADIO, {args.resolution} px, {device}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats} interleaved runs")  # fmt: skip
    print(f"{'size':<10} {'model':<8} {'params M':>9} {'GFLOPs':>9} {'images/s':>10}")
    for size, r in runs.items():
        for model in ("eradio", "vit"):
            print(f"{size:<10} {model:<8} {r[f'{model}_params_m']:>9.1f} {r[f'{model}_gflops']:>9.1f} "
                  f"{r[f'{model}_images_per_s']:>10.2f}")  # fmt: skip
        cpu_time = r.get("eradio_vs_vit_speedup_cpu_time")
        print(f"{size:<10} speedup  {r['eradio_vs_vit_speedup']:.2f}x wall"
              + (f", {cpu_time:.2f}x CPU time" if cpu_time else "")
              + f"  (FLOP ratio {r['vit_gflops'] / r['eradio_gflops']:.2f}x)")  # fmt: skip
    if args.json:
        scaled = runs[f"width/{args.width_factor}"]
        result = {k: round(v, 4) for k, v in scaled.items()}
        if "full size" in runs:
            result.update({f"{k}_full_size": round(v, 4) for k, v in runs["full size"].items()})
        result.update(device=device, resolution=args.resolution, width_factor=args.width_factor,
                      batch=args.batch, repeats=args.repeats, threads=torch.get_num_threads())  # fmt: skip
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
