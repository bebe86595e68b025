"""Vision-tower throughput: transformers' RadioModel vs CLIPVisionModel, and packed vs per-image batches.

Both towers are randomly initialised with the same width, depth, heads, MLP width and patch size and run
on the same number of patch tokens, so the ratio measures the implementations, not the weights.
RADIO carries its real prefix (RADIOv2.5: 4 CLS + 4 registers, radio_official.md 1.3) where CLIP has one
CLS token; a second RADIO row with a single prefix token runs exactly CLIP's sequence length.

    python bench/tower.py                 # ViT-S/16 at 224 px, batch 8, CPU (about 1-2 min on 2 cores)
    python bench/tower.py --size l --json # ViT-L/16; the last line is one JSON object

JSON keys: radio_vs_clip_fp32, radio_vs_clip_bf16 (RADIO images/s over CLIP images/s, higher = RADIO
faster), packed_vs_loop (packed batch of 8 mixed-aspect images over a per-image loop, higher = packed
faster), plus the raw images/s and settings. Each ratio also comes as `<key>_cpu_time`, measured on this
process's CPU time instead of the wall clock: on a shared machine run with --threads 1 and read those.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
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


def time_calls(calls: dict[str, Callable], repeats: int, warmup: int = 1) -> dict[str, tuple[float, float]]:
    """{name: (median wall seconds, median process CPU seconds)} per call.

    Repeats are interleaved so load changes hit every case alike. CPU seconds count only the time this
    process ran, so on a shared machine (with --threads 1) they are far steadier than wall time.
    """
    with torch.inference_mode():
        for fn in calls.values():
            for _ in range(warmup):
                fn()
        wall = {name: [] for name in calls}
        cpu = {name: [] for name in calls}
        for _ in range(repeats):
            for name, fn in calls.items():
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                fn()
                wall[name].append(time.perf_counter() - start_wall)
                cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in calls}


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
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    radio, width = build_towers(args.size, (4, 4))
    radio_one_prefix, _ = build_towers(args.size, (1, 0))
    clip = build_clip(args.size, args.resolution)
    images = torch.rand(args.batch, 3, args.resolution, args.resolution)
    patches = (args.resolution // 16) ** 2

    rows, results = [], {}  # rows: (case, input, images/s wall, images per CPU-second)

    def record(
        case: str, description: str, num_images: int, seconds: tuple[float, float]
    ) -> dict[str, float]:
        speeds = {"wall": num_images / seconds[0], "cpu": num_images / seconds[1]}
        rows.append((case, description, speeds["wall"], speeds["cpu"]))
        results[f"{case.replace(' ', '_')}_images_per_s"] = speeds["wall"]
        return speeds

    for dtype in ("fp32", "bf16"):
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
        )

        def run(model, autocast=autocast):
            with autocast:
                model(pixel_values=images)

        towers = {"radio": radio, "radio_1prefix": radio_one_prefix, "clip": clip}
        seconds = time_calls({name: (lambda m=m: run(m)) for name, m in towers.items()}, args.repeats)
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

    # Packed: one sequence holding differently sized images; loop: each image alone, dense.
    processor = RadioImageProcessor(long_edge=args.resolution, patch_size=16)
    mixed = [torch.rand(3, h, w) for h, w in MIXED_ASPECTS[: args.batch]]
    packed = processor(mixed, pack=True)
    singles = [processor(image)["pixel_values"] for image in mixed]
    seconds = time_calls(
        {
            "packed": lambda: radio(packed["pixel_values"], image_grid_hw=packed["image_grid_hw"]),
            "loop": lambda: [radio(single) for single in singles],
        },
        args.repeats,
    )
    total_tokens = int(packed["image_grid_hw"].prod(-1).sum())
    description = f"{len(mixed)} mixed-aspect images, {total_tokens} patches"
    speeds = {name: record(f"radio {name} fp32", description, len(mixed), seconds[name]) for name in seconds}
    results["packed_vs_loop"] = speeds["packed"]["wall"] / speeds["loop"]["wall"]
    results["packed_vs_loop_cpu_time"] = speeds["packed"]["cpu"] / speeds["loop"]["cpu"]

    print(f"ViT-{args.size.upper()}/16 (width {width}), {args.resolution} px, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}; higher ratio = ours faster")  # fmt: skip
    print(f"{'case':<22} {'input':<40} {'images/s':>9} {'img/CPU-s':>10}")
    for case, description, wall, cpu in rows:
        print(f"{case:<22} {description:<40} {wall:>9.2f} {cpu:>10.2f}")
    for key in ("radio_vs_clip_fp32", "radio_vs_clip_bf16", "packed_vs_loop"):
        print(f"{key:<22} {results[key]:.3f} wall, {results[key + '_cpu_time']:.3f} CPU time")
    if args.json:
        settings = {"size": args.size, "resolution": args.resolution, "batch": args.batch, "repeats": args.repeats,
                    "threads": torch.get_num_threads()}  # fmt: skip
        print(json.dumps({**{k: round(v, 4) for k, v in results.items()}, **settings}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
