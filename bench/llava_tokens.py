"""Image tokens per photo for RADIO-LLaVA token budgets vs the 576 of LLaVA-1.5's CLIP-L/14-336, and what each
budget does to the LLM's prefill time.

Settings (each a `RadioImageProcessor`, patch 16, aspect kept, padded as training and evaluation pad):

    clip_336               576 tokens for every photo (LLaVA-1.5's baseline)
    radio_432              long edge 432, every patch token (the AM-RADIO paper's LLaVA setting)
    radio_768_unshuffle2   long edge 768 with token_merge="unshuffle:2" (2.3x CLIP's pixels per side)
    radio_cap256           long edge 432 with max_image_tokens=256

Token counts come from `RadioImageProcessor.num_image_tokens`, the count the LLaVA processor expands
`<image>` to and the tower outputs (tests/llava_patch/test_token_budget.py checks they agree), over common
photo sizes. Prefill: one forward of a LLaMA (random weights; default hidden 1024, 4 layers, LLaMA-7B's MLP
ratio and vocabulary, so the decoder dominates; `--llm` takes a local LLaMA folder) over a LLaVA-1.5 prompt
(the Vicuna system prompt, the image tokens and a short question), logits for the last position only, as
`generate` prefills. Each distinct sequence length is timed once per round, the rounds visit them in a fresh
random order (after `--warmup` rounds), and a setting's prefill time is the sum over the photo sizes of the
median per length. Wall clock is what the goals are about; CPU time (process_time, all threads) is printed
beside it because other jobs may share the cores, with the load average before and after. On a CPU the
default is one thread (`--threads`): with other jobs on the cores, several OpenMP threads mostly time how
they wait for each other, while one thread's time follows the work (wall ~ CPU time).

    python bench/llava_tokens.py            # a table
    python bench/llava_tokens.py --json     # the last line is one JSON object

JSON keys: tokens_ratio_vs_576 {setting: mean tokens / 576}, prefill_speedup_unshuffle2_768_vs_576 and
prefill_speedup_cap256_vs_576 (prefill time at 576 / at the setting, higher = faster; also
prefill_speedup_432_vs_576), cpu_speedup (the same ratios in CPU time), mean_tokens, per_size tokens,
prefill_ms, goals (each goal and whether it was met), settings (model, repeats, threads, load).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from llava_patch.conversation import get_template, tokenizer_image_token  # noqa: E402
from llava_patch.llm import load_llm, random_llama  # noqa: E402
from radio_vlm.models.image_processing_radio import RadioImageProcessor  # noqa: E402

CLIP_TOKENS = 576  # CLIP-L/14 at 336 px: (336 / 14)^2, LLaVA-1.5
# (width, height) in px: VGA/COCO-style landscape and portrait, squares, HD
PHOTO_SIZES = [
    (640, 480),
    (640, 427),
    (480, 640),
    (500, 375),
    (375, 500),
    (612, 612),
    (1024, 768),
    (1920, 1080),
    (333, 500),
    (800, 600),
]
QUESTION = "What is the man holding?\nAnswer the question using a single word or phrase."
# setting -> RadioImageProcessor settings (None: CLIP's fixed 576)
SETTINGS: dict[str, dict | None] = {
    "clip_336": None,
    "radio_432": {"long_edge": 432},
    "radio_768_unshuffle2": {"long_edge": 768, "token_merge": "unshuffle:2"},
    "radio_cap256": {"long_edge": 432, "max_image_tokens": 256},
}
# JSON key -> (setting, goal: prefill at 576 / at the setting >= this)
SPEEDUP_KEYS = {
    "prefill_speedup_432_vs_576": ("radio_432", None),
    "prefill_speedup_unshuffle2_768_vs_576": ("radio_768_unshuffle2", 1.15),
    "prefill_speedup_cap256_vs_576": ("radio_cap256", 1.8),
}
TOKENS_GOAL = ("radio_768_unshuffle2", 0.8)  # at most this many times 576 tokens


def token_counts(settings: dict | None, patch_size: int) -> dict[str, int]:
    """Tokens per photo size ("640x480") under one setting."""
    if settings is None:
        return {f"{w}x{h}": CLIP_TOKENS for w, h in PHOTO_SIZES}
    processor = RadioImageProcessor(patch_size=patch_size, **settings)
    return {f"{w}x{h}": processor.num_image_tokens(h, w) for w, h in PHOTO_SIZES}


def build_llm(args: argparse.Namespace):
    """(model, tokenizer): a local LLaMA folder, or a random LLaMA of the given shape with tiny-llama's
    tokenizer (only the prompt's length matters)."""
    if args.llm:
        model, tokenizer = load_llm(args.llm)
        return model.eval(), tokenizer
    model, tokenizer = random_llama(args.hidden_size, args.layers, vocab_size=32000)
    return model.eval(), tokenizer


@torch.inference_mode()
def prefill_times(model, text_ids: list[int], lengths: list[int], rounds: int, warmup: int, seed: int = 0):
    """{image tokens: (median wall ms, median CPU ms)} of one prefill with that many image tokens."""
    device = next(model.parameters()).device
    sequences = {n: torch.tensor([text_ids[:1] + [0] * n + text_ids[1:]], device=device) for n in lengths}
    wall: dict[int, list[float]] = {n: [] for n in lengths}
    cpu: dict[int, list[float]] = {n: [] for n in lengths}
    order = list(lengths)
    rng = random.Random(seed)
    for round_index in range(warmup + rounds):
        rng.shuffle(order)
        for n in order:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            model(input_ids=sequences[n], logits_to_keep=1)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_index >= warmup:
                wall[n].append((time.perf_counter() - start_wall) * 1e3)
                cpu[n].append((time.process_time() - start_cpu) * 1e3)
    return {n: (statistics.median(wall[n]), statistics.median(cpu[n])) for n in lengths}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--llm", default=None, help="a local LLaMA/Vicuna folder (default: random LLaMA)")
    parser.add_argument("--hidden-size", type=int, default=1024, help="random LLaMA's width")
    parser.add_argument("--layers", type=int, default=4, help="random LLaMA's depth")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds over every sequence length")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1, see above)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)

    counts = {name: token_counts(settings, args.patch_size) for name, settings in SETTINGS.items()}
    mean_tokens = {name: statistics.mean(c.values()) for name, c in counts.items()}
    model, tokenizer = build_llm(args)
    model.to(args.device)
    prompt = get_template("vicuna_v1").render([(0, "<image>\n" + QUESTION), (1, None)])
    text_ids = [t for t in tokenizer_image_token(prompt, tokenizer, image_token_id=-1) if t != -1]
    lengths = sorted({n for c in counts.values() for n in c.values()})
    load_before = os.getloadavg()
    times = prefill_times(model, text_ids, lengths, args.rounds, args.warmup)
    load_after = os.getloadavg()
    wall_ms = {name: sum(times[n][0] for n in c.values()) for name, c in counts.items()}
    cpu_ms = {name: sum(times[n][1] for n in c.values()) for name, c in counts.items()}

    tokens_ratio = {name: mean / CLIP_TOKENS for name, mean in mean_tokens.items()}
    result: dict = {"tokens_ratio_vs_576": tokens_ratio}
    goals = {
        f"tokens_ratio_{TOKENS_GOAL[0]} <= {TOKENS_GOAL[1]}": tokens_ratio[TOKENS_GOAL[0]] <= TOKENS_GOAL[1]
    }
    result["cpu_speedup"] = {}
    for key, (name, goal) in SPEEDUP_KEYS.items():
        result[key] = wall_ms["clip_336"] / wall_ms[name]
        result["cpu_speedup"][key] = cpu_ms["clip_336"] / cpu_ms[name]
        if goal is not None:
            goals[f"{key} >= {goal}"] = result[key] >= goal
    total_params = sum(p.numel() for p in model.parameters())
    result.update(
        mean_tokens=mean_tokens,
        per_size=counts,
        prefill_ms={name: ms / len(PHOTO_SIZES) for name, ms in wall_ms.items()},  # mean per photo
        goals=goals,
        settings={
            "photo_sizes": len(PHOTO_SIZES),
            "patch_size": args.patch_size,
            "llm": args.llm or f"random LLaMA hidden {args.hidden_size}, {args.layers} layers",
            "llm_params": total_params,
            "text_tokens": len(text_ids),
            "rounds": args.rounds,
            "warmup": args.warmup,
            "device": args.device,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
        },
    )
    if not args.json:
        names = list(SETTINGS)
        print(f"{'photo (w x h)':>14} " + " ".join(f"{name:>21}" for name in names))
        for size in counts["clip_336"]:
            print(f"{size:>14} " + " ".join(f"{counts[name][size]:>21d}" for name in names))
        print(f"{'mean tokens':>14} " + " ".join(f"{mean_tokens[name]:>21.1f}" for name in names))
        print(f"{'x 576':>14} " + " ".join(f"{tokens_ratio[name]:>21.3f}" for name in names))
        print(f"{'prefill ms':>14} " + " ".join(f"{result['prefill_ms'][name]:>21.1f}" for name in names))
        speedups = {"clip_336": 1.0, **{name: result[key] for key, (name, _) in SPEEDUP_KEYS.items()}}
        cpu = {
            "clip_336": 1.0,
            **{name: result["cpu_speedup"][key] for key, (name, _) in SPEEDUP_KEYS.items()},
        }
        print(f"{'speedup wall':>14} " + " ".join(f"{speedups[name]:>21.2f}" for name in names))
        print(f"{'speedup CPU':>14} " + " ".join(f"{cpu[name]:>21.2f}" for name in names))
        print(
            f"{result['settings']['llm']} ({total_params / 1e6:.0f}M parameters), {len(text_ids)} text tokens, "
            f"median of {args.rounds} rounds, {torch.get_num_threads()} threads on {os.cpu_count()} CPUs; "
            f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
        )
        for goal, met in goals.items():
            print(f"goal {goal}: {'met' if met else 'MISSED'}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
