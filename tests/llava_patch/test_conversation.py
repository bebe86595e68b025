"""Tokenisation and label masking equal the original LLaVA's (llava-torch 1.2.2.post1, imported)."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from llava_patch.compat import import_original_llava
from llava_patch.conversation import (
    IGNORE_INDEX,
    IMAGE_TAG,
    LLAVA_IMAGE_TOKEN_INDEX,
    MaskingMismatch,
    expand_image_tokens,
    get_template,
    move_image_tag_first,
    tokenize_conversation,
)
from llava_patch.llm import train_llama_tokenizer

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "bus",
    "sits",
    "on",
    "red",
    "blue",
    "mat",
    "what",
    "color",
    "is",
    "picture",
    "describe",
    "answer",
    "yes",
    "no",
]


@pytest.fixture(scope="session")
def llama_tokenizer(tmp_path_factory):
    rng = random.Random(1)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(500)]
    return train_llama_tokenizer(corpus, tmp_path_factory.mktemp("spm"), vocab_size=320)


@pytest.fixture(scope="module")
def original():
    return import_original_llava("llava.train.train"), import_original_llava("llava.conversation")


def _conversations(rng: random.Random, n: int, with_image: bool) -> list[list[dict]]:
    """Random multi-turn conversations, <image> at varying places of the first turn, odd characters
    (digits, punctuation, unicode) that exercise byte fallback."""
    extras = ["", " 42", "?", " café", " 3.5 km.", "\n", "  two  spaces"]

    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))) + rng.choice(extras)

    convs = []
    for _ in range(n):
        turns = []
        for _ in range(rng.randint(1, 3)):
            turns += [{"from": "human", "value": text()}, {"from": "gpt", "value": text()}]
        if with_image:
            where = rng.choice(["<image>\n{}", "{}\n<image>", "{} <image> end"])
            turns[0]["value"] = where.format(turns[0]["value"])
        convs.append(turns)
    return convs


def _original_ids(original, tokenizer, template: str, turns: list[dict], has_image: bool):
    train, conversation_lib = original
    conversation_lib.default_conversation = conversation_lib.conv_templates[template]
    sources = copy.deepcopy([turns])
    if has_image:  # the original's DataArguments-driven image tag handling
        args = type("DataArgs", (), {"is_multimodal": True, "mm_use_im_start_end": False})()
        sources = train.preprocess_multimodal(sources, args)
    if template == "plain":
        out = train.preprocess_plain(sources, tokenizer)
    else:
        out = train.preprocess_v1(sources, tokenizer, has_image=has_image)
    return out["input_ids"][0].tolist(), out["labels"][0].tolist()


@pytest.mark.parametrize("template,has_image", [("plain", True), ("vicuna_v1", True), ("vicuna_v1", False)])
def test_masking_parity_with_original_llava(llama_tokenizer, original, template, has_image):
    rng = random.Random(hash((template, has_image)) % 1000)
    convs = _conversations(rng, 25, has_image)
    if template == "plain":
        convs = [c[:2] for c in convs]
    supervised = dropped = 0
    for turns in convs:
        ids, labels = _original_ids(original, llama_tokenizer, template, turns, has_image)
        try:
            ours = tokenize_conversation(turns, llama_tokenizer, get_template(template), has_image=has_image)
        except MaskingMismatch:  # where we drop a sample, LLaVA trains on nothing of it
            assert set(labels) == {IGNORE_INDEX}
            dropped += 1
            continue
        assert ours.input_ids == ids
        assert ours.labels == labels
        assert (LLAVA_IMAGE_TOKEN_INDEX in ids) == has_image
        supervised += sum(t != IGNORE_INDEX for t in labels)
    assert supervised > 0 and dropped <= len(convs) // 2  # all-masked parity would prove nothing


def test_vicuna_supervises_answers_and_eos(llama_tokenizer):
    turns = [
        {"from": "human", "value": "<image>\nwhat color is the bus"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "is the cat on the mat"},
        {"from": "gpt", "value": "yes"},
    ]
    out = tokenize_conversation(turns, llama_tokenizer, get_template("vicuna_v1"), has_image=True)
    spans, current = [], []
    for t, label in zip(out.input_ids, out.labels):
        if label != IGNORE_INDEX:
            current.append(t)
        elif current:
            spans.append(current)
            current = []
    spans.append(current) if current else None
    assert [llama_tokenizer.decode(s) for s in spans] == ["red</s>", "yes</s>"]


def test_mismatch_raises_naming_the_sample(llama_tokenizer, original):
    # A legacy flag that lies about the tokenizer makes LLaVA's arithmetic miss by one token per round.
    tokenizer = copy.copy(llama_tokenizer)
    tokenizer.legacy = True
    turns = [{"from": "human", "value": "what"}, {"from": "gpt", "value": "red"}] * 2
    with pytest.raises(MaskingMismatch, match="sample s-17"):
        tokenize_conversation(turns, tokenizer, get_template("vicuna_v1"), has_image=False, sample_id="s-17")
    _, labels = _original_ids(original, tokenizer, "vicuna_v1", turns, has_image=False)
    assert set(labels) == {IGNORE_INDEX}  # what LLaVA would have trained on: nothing


def test_expand_image_tokens():
    from llava_patch.conversation import TokenizedConversation

    ids = TokenizedConversation([1, 9, 5, 9, 6], [IGNORE_INDEX, IGNORE_INDEX, 5, IGNORE_INDEX, 6])
    out = expand_image_tokens(ids, 9, [2, 3])
    assert out.input_ids == [1, 9, 9, 5, 9, 9, 9, 6]
    assert out.labels == [IGNORE_INDEX] * 3 + [5] + [IGNORE_INDEX] * 3 + [6]
    assert torch.tensor(out.input_ids).eq(9).sum() == 5


def test_chat_template_renders_the_original_llava_prompt(llama_tokenizer, original):
    """The vicuna_v1 chat template that runs save (apply_chat_template, pipeline chat input) gives the prompt
    of the original LLaVA's `conv_vicuna_v1.get_prompt()`, images moved first as preprocess_multimodal does."""
    _, conversation_lib = original
    chat_template = get_template("vicuna_v1").chat_template()
    rng = random.Random(3)
    for turns in _conversations(rng, 10, with_image=True):
        turns = turns[:-1]  # end on a question: a generation prompt
        conv = conversation_lib.conv_templates["vicuna_v1"].copy()
        messages = []
        for i, turn in enumerate(turns):
            value = move_image_tag_first(turn["value"])
            conv.append_message(conv.roles[i % 2], value)
            text = value.removeprefix(IMAGE_TAG + "\n")
            parts = [{"type": "image"}] if value != text else []
            messages.append(
                {"role": ("user", "assistant")[i % 2], "content": [*parts, {"type": "text", "text": text}]}
            )
        conv.append_message(conv.roles[1], None)
        rendered = llama_tokenizer.apply_chat_template(
            messages, chat_template=chat_template, tokenize=False, add_generation_prompt=True
        )
        assert rendered == conv.get_prompt()
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (
        llama_tokenizer.apply_chat_template(system, chat_template=chat_template, tokenize=False)
        == "Be brief. USER: Hi "
    )
    with pytest.raises(ValueError, match="only a conversation layout"):
        get_template("plain").chat_template()
