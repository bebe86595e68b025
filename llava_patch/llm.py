"""The language model side: load a local LLaMA/Vicuna folder or a registered tiny twin, with LLaVA-1.5's
tokenizer settings.

`tiny-llama` is a 2-layer LLaMA (hidden 32) with a LLaMA-style SentencePiece tokenizer (BPE with byte
fallback, `<unk>`=0, `<s>`=1, `</s>`=2), trained deterministically on a fixed generated corpus at build
time (a fraction of a second), so tests and the demo need no files and no download.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaTokenizer

# model_max_length and right padding as LLaVA-1.5's train.py (pad = unk for every v1 template)
MODEL_MAX_LENGTH = 2048

# Words of LLaVA prompts (Vicuna system prompt, typical questions and captions): the tiny tokenizer
# learns them as pieces, like a real one, and byte fallback covers everything else. The roles USER and
# ASSISTANT are left out on purpose: as learnt pieces, "▁USER" (a round tokenised alone) and "USER"
# (after "</s>") would differ by more than the one "▁" that LLaVA's masking arithmetic allows for.
_TINY_WORDS = [
    "a",
    "chat",
    "between",
    "curious",
    "user",
    "and",
    "an",
    "artificial",
    "intelligence",
    "assistant",
    "the",
    "gives",
    "helpful",
    "detailed",
    "polite",
    "answers",
    "to",
    "user's",
    "questions",
    "what",
    "is",
    "in",
    "image",
    "picture",
    "photo",
    "of",
    "describe",
    "this",
    "briefly",
    "answer",
    "question",
    "using",
    "single",
    "word",
    "or",
    "phrase",
    "color",
    "shape",
    "red",
    "green",
    "blue",
    "yellow",
    "black",
    "white",
    "square",
    "circle",
    "stripe",
    "left",
    "right",
    "top",
    "bottom",
    "cat",
    "dog",
    "bus",
    "car",
    "man",
    "woman",
    "tree",
    "sky",
    "yes",
    "no",
    "there",
    "are",
    "how",
    "many",
    "one",
    "two",
    "three",
    "four",
    "on",
    "with",
    "is",
    "the",
    "it",
]


def train_llama_tokenizer(
    sentences: Iterable[str], out_dir: str | Path, vocab_size: int = 512
) -> LlamaTokenizer:
    """A LLaMA-style SentencePiece BPE tokenizer (byte fallback, unk/bos/eos = 0/1/2) trained on
    `sentences`, saved to `out_dir` and loaded as a transformers `LlamaTokenizer` with LLaVA's settings."""
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # LLaMA's trainer settings that matter for tokenisation: identity normalisation, dummy prefix,
    # digits split, whitespace kept; one thread so the result is deterministic.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences)),
        model_prefix=str(out_dir / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        num_threads=1,
        minloglevel=2,
    )
    tokenizer = LlamaTokenizer.from_pretrained(str(out_dir), add_bos_token=True, legacy=False)
    return configure_tokenizer(tokenizer)


def configure_tokenizer(tokenizer):
    """LLaVA-1.5's settings (train.py): model_max_length 2048, right padding, pad = unk."""
    tokenizer.model_max_length = MODEL_MAX_LENGTH
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def _tiny_corpus(num_lines: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_TINY_WORDS) for _ in range(rng.randint(4, 16))) for _ in range(num_lines)]


def build_tiny_llama() -> tuple[LlamaForCausalLM, LlamaTokenizer]:
    """The `tiny-llama` twin: random 2-layer LLaMA (hidden 32, 4 heads) and its tokenizer."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_llama_tokenizer(_tiny_corpus(), tmp)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MODEL_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # 10x LLaMA's 0.02: at hidden 32 the default gives near-uniform logits that no input can move,
        # so a projector-only (pretrain) run could not lower the loss
        initializer_range=0.2,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def random_llama(
    hidden_size: int, num_layers: int, *, head_dim: int = 64, vocab_size: int | None = None
) -> tuple[LlamaForCausalLM, LlamaTokenizer]:
    """A random LLaMA `hidden_size` wide and `num_layers` deep in LLaMA-7B's proportions (MLP 11008/4096 of
    the width, heads of `head_dim`), seed 0, with tiny-llama's tokenizer (and its vocabulary unless
    `vocab_size` is given): the stand-in for a Vicuna checkpoint where only the LLM's size matters (benchmarks).
    """
    _, tokenizer = build_tiny_llama()
    config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 11008 // 4096,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // head_dim,
        num_key_value_heads=hidden_size // head_dim,
        max_position_embeddings=MODEL_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return model, tokenizer


TINY_LLMS: dict[str, Callable[[], tuple[LlamaForCausalLM, LlamaTokenizer]]] = {"tiny-llama": build_tiny_llama}


def list_tiny_llms() -> list[str]:
    return sorted(TINY_LLMS)


def load_llm(name_or_path: str, dtype: torch.dtype = torch.float32):
    """(causal LM in `dtype`, tokenizer) from a registered tiny twin name or a local Hugging Face folder.

    The dtype is always explicit: transformers would otherwise take the checkpoint's (Vicuna's config says
    float16). Under DeepSpeed ZeRO-3 (a ZeRO-3 `TrainingArguments` alive) a folder loads partitioned."""
    if name_or_path in TINY_LLMS:
        model, tokenizer = TINY_LLMS[name_or_path]()
        return model.to(dtype), tokenizer
    if not Path(name_or_path).is_dir():
        raise FileNotFoundError(
            f"--llm {name_or_path!r} is neither a local folder nor a tiny twin ({list_tiny_llms()}); "
            "download the LLM (e.g. lmsys/vicuna-7b-v1.5) and pass its folder"
        )
    tokenizer = configure_tokenizer(AutoTokenizer.from_pretrained(name_or_path))
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    return model, tokenizer
