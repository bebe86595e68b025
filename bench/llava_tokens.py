"""Image tokens per image for RADIO-LLaVA (long edge 432, patch 16, aspect kept, padded to the patch) vs the
576 of LLaVA-1.5's CLIP-L/14-336, and what that does to the LLM's prefill time.

Token counts come from `RadioImageProcessor.num_image_tokens` (the processor training and evaluation use)
over common photo sizes. Prefill: one forward of the LLM (default the tiny-LLaMA twin; `--llm` takes a
local LLaMA folder) over a LLaVA prompt (image tokens + the Vicuna system prompt and a short question),
with each size's RADIO token count vs 576 tokens; the median of interleaved repeats.

    python bench/llava_tokens.py            # a table
    python bench/llava_tokens.py --json     # the last line is one JSON object

JSON keys: mean_tokens, tokens_ratio_vs_576 (mean RADIO tokens / 576, lower = fewer tokens),
prefill_speedup (prefill time with 576 image tokens / with the RADIO counts, higher = RADIO faster),
per_size tokens, prefill_ms, settings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from llava_patch.conversation import get_template, tokenizer_image_token  # noqa: E402
from llava_patch.llm import load_llm  # noqa: E402
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


def token_counts(long_edge: int, patch_size: int) -> dict[str, int]:
    processor = RadioImageProcessor(long_edge=long_edge, patch_size=patch_size)
    return {f"{w}x{h}": processor.num_image_tokens(h, w) for w, h in PHOTO_SIZES}


@torch.no_grad()
def prefill_ms(model, text_ids: list[int], num_image_tokens: list[int], repeats: int) -> list[float]:
    """Median ms of one forward over [image tokens + text] for each count, measured interleaved."""
    sequences = [torch.tensor([text_ids[:1] + [0] * n + text_ids[1:]]) for n in num_image_tokens]
    times: list[list[float]] = [[] for _ in sequences]
    for ids in sequences:  # warm-up
        model(input_ids=ids)
    for _ in range(repeats):
        for i, ids in enumerate(sequences):
            start = time.perf_counter()
            model(input_ids=ids)
            times[i].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long-edge", type=int, default=432)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--llm", default="tiny-llama", help="tiny-llama or a local LLaMA/Vicuna folder")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    counts = token_counts(args.long_edge, args.patch_size)
    mean_tokens = statistics.mean(counts.values())
    model, tokenizer = load_llm(args.llm)
    model.eval()
    prompt = get_template("vicuna_v1").render([(0, "<image>\n" + QUESTION), (1, None)])
    text_ids = [t for t in tokenizer_image_token(prompt, tokenizer, image_token_id=-1) if t != -1]
    radio_ms = prefill_ms(model, text_ids, [*counts.values(), CLIP_TOKENS], args.repeats)
    clip_ms = radio_ms.pop()
    result = {
        "mean_tokens": mean_tokens,
        "tokens_ratio_vs_576": mean_tokens / CLIP_TOKENS,
        "prefill_speedup": clip_ms / statistics.mean(radio_ms),
        "per_size": counts,
        "prefill_ms": {"clip_576": clip_ms, "radio_mean": statistics.mean(radio_ms)},
        "settings": {
            "long_edge": args.long_edge,
            "patch_size": args.patch_size,
            "llm": args.llm,
            "text_tokens": len(text_ids),
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
        },
    }
    if not args.json:
        for size, n in counts.items():
            print(f"{size:>10}: {n:4d} tokens ({n / CLIP_TOKENS:.2f} x 576)")
        print(
            f"mean {mean_tokens:.1f} tokens = {result['tokens_ratio_vs_576']:.3f} x 576; "
            f"prefill {result['prefill_ms']['radio_mean']:.2f} ms vs {clip_ms:.2f} ms at 576 "
            f"-> {result['prefill_speedup']:.2f}x"
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
