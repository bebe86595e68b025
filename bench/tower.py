"""Vision-tower throughput: transformers' RadioModel vs CLIPVisionModel, packed vs per-image batches, and how
close the RADIO forward comes to the matrix-multiply ceiling of its own shapes.

Both towers are randomly initialised with the same width, depth, heads, MLP width and patch size and run
on the same number of patch tokens, so the ratio measures the implementations, not the weights.
RADIO carries its real prefix (RADIOv2.5: 4 CLS + 4 registers, radio_official.md 1.3) where CLIP has one
CLS token; a second RADIO row with a single prefix token runs exactly CLIP's sequence length.

    python bench/tower.py                 # ViT-S/16 at 224 px, batch 8, CPU (about 1-2 min on 2 cores)
    python bench/tower.py --size l --json # ViT-L/16; the last line is one JSON object

JSON keys: radio_vs_clip_fp32, radio_vs_clip_bf16 (RADIO images/s over CLIP images/s, higher = RADIO
faster), packed_vs_loop (packed batch of 8 mixed-aspect images over a per-image loop, higher = packed
faster), fraction_of_matmul_peak (fp32; `_bf16` under bf16 autocast): the RADIO forward's achieved FLOP/s
over the FLOP/s of the same run's matrix multiplies alone, timed on random tensors of exactly the shapes
and dtypes the forward multiplies (recorded from one forward, attention as its two batched products), so
1.0 would mean nothing but the matmuls costs time; plus the FLOP/s, raw images/s and settings. Each ratio
also comes as `<key>_cpu_time`, measured on this process's CPU time instead of the wall clock: on a shared
machine run with --threads 1 and read those. On a GPU (`--device cuda`, the default when one is there)
the wall-clock ratios are the ones to read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import CLIPVisionConfig, CLIPVisionModel, RadioConfig, RadioModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from radio_vlm.models.image_processing_radio import RadioImageProcessor  # noqa: E402

# name -> (width, depth, heads); MLP width is 4x (ViT and CLIP alike).
SIZES = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "h": (1280, 32, 16)}
# (height, width) in px of the mixed-aspect batch, before resizing to the long edge.
MIXED_ASPECTS = [
    (480, 640),
    (640, 480),
    (512, 512),
    (300, 900),
    (900, 300),
    (427, 640),
    (360, 640),
    (600, 400),
]


def build_towers(size: str, num_prefix: tuple[int, int]) -> tuple[RadioModel, int]:
    width, depth, heads = SIZES[size]
    common = {
        "hidden_size": width,
        "num_hidden_layers": depth,
        "num_attention_heads": heads,
        "patch_size": 16,
    }
    radio = RadioModel(
        RadioConfig(
            **common,
            intermediate_size=4 * width,
            num_cls_tokens=num_prefix[0],
            num_registers=num_prefix[1],
            summary_idxs=list(range(num_prefix[0])),
        )  # fmt: skip
    )
    return radio.eval(), width


def build_clip(size: str, image_size: int) -> CLIPVisionModel:
    width, depth, heads = SIZES[size]
    config = CLIPVisionConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                              intermediate_size=4 * width, patch_size=16, image_size=image_size)  # fmt: skip
    return CLIPVisionModel(config).eval()


def time_calls(
    calls: dict[str, Callable], repeats: int, device: torch.device, warmup: int = 1
) -> dict[str, tuple[float, float]]:
    """{name: (median wall seconds, median process CPU seconds)} per call.

    Repeats are interleaved so load changes hit every case alike. CPU seconds count only the time this
    process ran, so on a shared machine (with --threads 1) they are far steadier than wall time. On a GPU
    each call is synchronised before its clock stops.
    """

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        for fn in calls.values():
            for _ in range(warmup):
                fn()
        synchronize()
        wall = {name: [] for name in calls}
        cpu = {name: [] for name in calls}
        for _ in range(repeats):
            for name, fn in calls.items():
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                fn()
                synchronize()
                wall[name].append(time.perf_counter() - start_wall)
                cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in calls}


class MatmulRecorder(TorchDispatchMode):
    """Records every matrix multiply of a forward as (batch, m, k, n, dtype); a fused attention kernel counts as
    its two batched products, q @ k^T and softmax @ v."""

    def __init__(self):
        super().__init__()
        self.products: list[tuple[int, int, int, int, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__  # in inference mode composite ops (linear, sdpa) arrive whole
        if name == "linear":
            x, weight = args[0], args[1]
            self.products.append((1, x.numel() // x.shape[-1], x.shape[-1], weight.shape[0], x.dtype))
        elif name in ("mm", "addmm", "bmm"):
            a, b = args[-2:] if name == "addmm" else args[:2]
            batch = a.shape[0] if name == "bmm" else 1
            self.products.append((batch, a.shape[-2], a.shape[-1], b.shape[-1], a.dtype))
        elif "scaled_dot_product" in name:
            query, key = args[0], args[1]  # (B, heads, N, head_dim)
            batch = query.shape[0] * query.shape[1]
            self.products.append((batch, query.shape[-2], query.shape[-1], key.shape[-2], query.dtype))
            self.products.append((batch, query.shape[-2], key.shape[-2], query.shape[-1], query.dtype))
        return func(*args, **(kwargs or {}))


def matmul_ceiling(forward: Callable, repeats: int, device: torch.device) -> tuple[float, float, float]:
    """(FLOPs, wall seconds, CPU seconds) of the matrix multiplies of one `forward()`, timed alone on random
    tensors of the same shapes and dtypes: the time a forward made of nothing else would take."""
    recorder = MatmulRecorder()
    with torch.inference_mode(), recorder:
        forward()
    counts: dict[tuple, int] = {}
    for product in recorder.products:
        counts[product] = counts.get(product, 0) + 1
    operands = {
        shape: (torch.randn(shape[0], shape[1], shape[2], device=device, dtype=shape[4]),
                torch.randn(shape[0], shape[2], shape[3], device=device, dtype=shape[4]))
        for shape in counts
    }  # fmt: skip
    seconds = time_calls(
        {shape: (lambda a=a, b=b: torch.bmm(a, b)) for shape, (a, b) in operands.items()}, repeats, device
    )
    flops = sum(2 * b * m * k * n * count for (b, m, k, n, _), count in counts.items())
    wall = sum(seconds[shape][0] * count for shape, count in counts.items())
    cpu = sum(seconds[shape][1] * count for shape, count in counts.items())
    return flops, wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="s", help="ViT size (default s: 384 wide, 12 deep)"
    )
    parser.add_argument("--resolution", type=int, default=224, help="square input side in px (default 224)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repeats per case; the median is reported"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="default: cuda when available",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)

    radio, width = build_towers(args.size, (4, 4))
    radio_one_prefix, _ = build_towers(args.size, (1, 0))
    clip = build_clip(args.size, args.resolution)
    radio, radio_one_prefix, clip = (m.to(device) for m in (radio, radio_one_prefix, clip))
    images = torch.rand(args.batch, 3, args.resolution, args.resolution, device=device)
    patches = (args.resolution // 16) ** 2

    rows, results = [], {}  # rows: (case, input, images/s wall, images per CPU-second)
    peak_rows = []  # (dtype, GFLOP per forward, achieved GFLOP/s wall, ceiling GFLOP/s wall, fraction wall, CPU)

    def record(
        case: str, description: str, num_images: int, seconds: tuple[float, float]
    ) -> dict[str, float]:
        speeds = {"wall": num_images / seconds[0], "cpu": num_images / seconds[1]}
        rows.append((case, description, speeds["wall"], speeds["cpu"]))
        results[f"{case.replace(' ', '_')}_images_per_s"] = speeds["wall"]
        return speeds

    for dtype in ("fp32", "bf16"):
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
        )

        def run(model, autocast=autocast):
            with autocast:
                model(pixel_values=images)

        towers = {"radio": radio, "radio_1prefix": radio_one_prefix, "clip": clip}
        seconds = time_calls({name: (lambda m=m: run(m)) for name, m in towers.items()}, args.repeats, device)
        tokens = {"radio": patches + 8, "radio_1prefix": patches + 1, "clip": patches + 1}
        speeds = {
            name: record(
                f"{name} {dtype}", f"batch {args.batch} x {tokens[name]} tokens", args.batch, seconds[name]
            )
            for name in towers
        }
        for name in ("radio", "radio_1prefix"):
            for clock, suffix in (("wall", ""), ("cpu", "_cpu_time")):
                results[f"{name}_vs_clip_{dtype}{suffix}"] = speeds[name][clock] / speeds["clip"][clock]
        flops, matmul_wall, matmul_cpu = matmul_ceiling(lambda run=run: run(radio), args.repeats, device)
        forward_wall, forward_cpu = seconds["radio"]
        key = "fraction_of_matmul_peak" + ("" if dtype == "fp32" else "_bf16")
        results[key], results[key + "_cpu_time"] = matmul_wall / forward_wall, matmul_cpu / forward_cpu
        results[f"radio_gflops_per_s_{dtype}"] = flops / forward_wall / 1e9
        results[f"matmul_ceiling_gflops_per_s_{dtype}"] = flops / matmul_wall / 1e9
        peak_rows.append((dtype, flops / 1e9, flops / forward_wall / 1e9, flops / matmul_wall / 1e9, results[key],
                          results[key + "_cpu_time"]))  # fmt: skip

    # Packed: one sequence holding differently sized images; loop: each image alone, dense.
    processor = RadioImageProcessor(long_edge=args.resolution, patch_size=16)
    mixed = [torch.rand(3, h, w) for h, w in MIXED_ASPECTS[: args.batch]]
    packed = processor(mixed, pack=True)
    singles = [processor(image)["pixel_values"] for image in mixed]
    packed = {k: v.to(device) for k, v in packed.items() if isinstance(v, torch.Tensor)}
    singles = [single.to(device) for single in singles]
    seconds = time_calls(
        {
            "packed": lambda: radio(packed["pixel_values"], image_grid_hw=packed["image_grid_hw"]),
            "loop": lambda: [radio(single) for single in singles],
        },
        args.repeats,
        device,
    )
    total_tokens = int(packed["image_grid_hw"].prod(-1).sum())
    description = f"{len(mixed)} mixed-aspect images, {total_tokens} patches"
    speeds = {name: record(f"radio {name} fp32", description, len(mixed), seconds[name]) for name in seconds}
    results["packed_vs_loop"] = speeds["packed"]["wall"] / speeds["loop"]["wall"]
    results["packed_vs_loop_cpu_time"] = speeds["packed"]["cpu"] / speeds["loop"]["cpu"]

    load = os.getloadavg()[0]  # other jobs on the machine skew the wall clock; the CPU-time columns less so
    print(f"ViT-{args.size.upper()}/16 (width {width}), {args.resolution} px, {device.type}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}, load average {load:.1f}; "
          "higher ratio = ours faster")  # fmt: skip
    print(f"{'case':<22} {'input':<40} {'images/s':>9} {'img/CPU-s':>10}")
    for case, description, wall, cpu in rows:
        print(f"{case:<22} {description:<40} {wall:>9.2f} {cpu:>10.2f}")
    print(f"\nRADIO forward vs its own matrix multiplies alone (batch {args.batch}, same shapes and dtypes)")
    print(
        f"{'dtype':<6} {'GFLOP':>8} {'GFLOP/s':>9} {'matmul GFLOP/s':>15} {'fraction':>9} {'(CPU time)':>11}"
    )
    for dtype, gflop, achieved, ceiling, fraction, fraction_cpu in peak_rows:
        print(
            f"{dtype:<6} {gflop:>8.2f} {achieved:>9.1f} {ceiling:>15.1f} {fraction:>9.3f} {fraction_cpu:>11.3f}"
        )
    print()
    for key in ("radio_vs_clip_fp32", "radio_vs_clip_bf16", "packed_vs_loop", "fraction_of_matmul_peak",
                "fraction_of_matmul_peak_bf16"):  # fmt: skip
        print(f"{key:<28} {results[key]:.3f} wall, {results[key + '_cpu_time']:.3f} CPU time")
    if args.json:
        settings = {"size": args.size, "resolution": args.resolution, "batch": args.batch, "repeats": args.repeats,
                    "threads": torch.get_num_threads(), "device": device.type, "load_average": round(load, 2)}  # fmt: skip
        print(json.dumps({**{k: round(v, 4) for k, v in results.items()}, **settings}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
