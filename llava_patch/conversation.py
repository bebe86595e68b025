"""LLaVA-1.5 conversation templates, tokenisation and label masking.

Reproduces, token for token, what the original LLaVA code (haotian-liu/LLaVA `llava/train/train.py`
`preprocess_multimodal`, `preprocess_plain`, `preprocess_v1` and `llava/mm_utils.py`
`tokenizer_image_token`, shared with `RadioLlavaProcessor`) feeds the model, so a RADIO-LLaVA trained here
sees the same sequences as LLaVA-1.5. One deliberate difference: where LLaVA masks a whole sample after its masking arithmetic
disagrees with the tokenisation (and trains on nothing, printing a warning that scrolls away),
`tokenize_conversation` raises `MaskingMismatch` naming the sample, and the data set skips and counts it.

The image is one placeholder id per `<image>` tag (LLaVA's -200, or the tokenizer's real `<image>` id);
`expand_image_tokens` widens it to the image's number of patch tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

# one definition for training and for the processor that ships with the model (exportable, so it lives there)
from radio_vlm.models.processing_radio_llava import IMAGE_TAG, tokenizer_image_token

IGNORE_INDEX = -100  # llava/constants.py; also the ignore_index of transformers' causal-LM loss
LLAVA_IMAGE_TOKEN_INDEX = -200  # llava/constants.py: placeholder id that is never embedded
ROLE_OF = {"human": 0, "gpt": 1}  # LLaVA JSON "from" field -> index into a template's roles


class MaskingMismatch(ValueError):
    """The label-masking arithmetic disagrees with the tokenisation: the sample would train on nothing."""


@dataclass(frozen=True)
class ConversationTemplate:
    """A prompt layout (llava/conversation.py). `style="two"` alternates `sep` after user turns and `sep2`
    after assistant turns; `style="plain"` is pretraining's `<image>` + caption + `sep`."""

    name: str
    system: str
    roles: tuple[str, str]
    sep: str
    sep2: str
    style: Literal["plain", "two"]

    def render(self, messages: list[tuple[int, str | None]]) -> str:
        """Prompt text for `(role_index, text)` messages; a `None` text ends the prompt with "ROLE:"
        (a generation prompt), exactly as LLaVA's `Conversation.get_prompt`."""
        seps = (self.sep, self.sep2)
        if self.style == "plain":
            return self.system + "".join(text + seps[i % 2] for i, (_, text) in enumerate(messages) if text)
        out = self.system + self.sep
        for i, (role, text) in enumerate(messages):
            out += f"{self.roles[role]}: {text}{seps[i % 2]}" if text else f"{self.roles[role]}:"
        return out

    def chat_template(self) -> str:
        """This layout as a Jinja chat template for transformers' `apply_chat_template` (and so for
        `pipeline("image-text-to-text")` given chat messages): `render` of the "user" / "assistant" messages, a
        leading "system" message replacing the system prompt; a message's images become "<image>\\n" at its
        start (LLaVA moves the tag there), its text parts follow. Only for `style="two"` layouts."""
        if self.style != "two":
            raise ValueError(
                f"template {self.name!r}: only a conversation layout ('two') has a chat template"
            )
        q = json.dumps  # Jinja string literals
        return (
            "{%- macro content(message) -%}"
            "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
            "{%- for part in message['content'] if part['type'] == 'image' -%}{{ "
            + q(IMAGE_TAG + "\n")
            + " }}"
            "{%- endfor -%}"
            "{%- for part in message['content'] if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
            "{%- endif -%}"
            "{%- endmacro -%}"
            "{%- if messages and messages[0]['role'] == 'system' -%}{{ content(messages[0]) }}"
            "{%- set messages = messages[1:] -%}{%- else -%}{{ " + q(self.system) + " }}{%- endif -%}"
            "{{ " + q(self.sep) + " }}"
            "{%- for message in messages -%}"
            "{%- if message['role'] == 'user' -%}{{ " + q(self.roles[0] + ": ") + " }}{{ content(message) }}"
            "{{ " + q(self.sep) + " }}"
            "{%- elif message['role'] == 'assistant' -%}{{ "
            + q(self.roles[1] + ": ")
            + " }}{{ content(message) }}"
            "{{ " + q(self.sep2) + " }}"
            "{%- else -%}{{ raise_exception('roles are system (first), user and assistant') }}{%- endif -%}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{ " + q(self.roles[1] + ":") + " }}{%- endif -%}"
        )


# conv_llava_plain and conv_vicuna_v1 of llava/conversation.py (the v1.5 scripts' --version plain / v1)
TEMPLATES: dict[str, ConversationTemplate] = {
    "plain": ConversationTemplate("plain", "", ("", ""), "\n", "", "plain"),
    "vicuna_v1": ConversationTemplate(
        "vicuna_v1",
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        ("USER", "ASSISTANT"),
        " ",
        "</s>",
        "two",
    ),
}


def get_template(name: str) -> ConversationTemplate:
    """The registered template `name` (exact match): one of `TEMPLATES`."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}: choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def move_image_tag_first(text: str) -> str:
    """LLaVA's `preprocess_multimodal` on one turn: the tag goes first, followed by a newline."""
    if IMAGE_TAG not in text:
        return text
    return (IMAGE_TAG + "\n" + text.replace(IMAGE_TAG, "").strip()).strip()


@dataclass
class TokenizedConversation:
    input_ids: list[int]  # (L,) with one image placeholder id per image
    labels: list[int]  # (L,) IGNORE_INDEX where the model is not trained to predict


def tokenize_conversation(
    turns: list[dict],
    tokenizer,
    template: ConversationTemplate,
    has_image: bool,
    image_token_id: int = LLAVA_IMAGE_TOKEN_INDEX,
    sample_id: str = "?",
) -> TokenizedConversation:
    """Input ids and labels of one LLaVA conversation (`[{"from": "human"|"gpt", "value": str}, ...]`).

    `turns` must already be validated (alternating roles, non-empty, `<image>` only in the first human
    turn when `has_image`). Raises `MaskingMismatch` when the masking arithmetic of LLaVA's
    `preprocess_v1` disagrees with the tokenisation (LLaVA would silently mask the whole sample).
    """
    turns = [{**t, "value": move_image_tag_first(t["value"])} if has_image else t for t in turns]
    if template.style == "plain":
        return _tokenize_plain(turns, tokenizer, template, image_token_id)
    return _tokenize_two(turns, tokenizer, template, has_image, image_token_id, sample_id)


def _tokenize_plain(turns, tokenizer, template, image_token_id) -> TokenizedConversation:
    # preprocess_plain: the instruction is dropped, only "<image>" + caption + "\n" remains; the loss
    # covers the caption and the newline (no EOS, no roles).
    if len(turns) != 2 or IMAGE_TAG not in turns[0]["value"]:
        raise ValueError("the plain template needs exactly one human turn with <image> and one gpt turn")
    ids = tokenizer_image_token(IMAGE_TAG + turns[1]["value"] + template.sep, tokenizer, image_token_id)
    num_masked = len(tokenizer_image_token(IMAGE_TAG, tokenizer, image_token_id))
    return TokenizedConversation(ids, [IGNORE_INDEX] * num_masked + ids[num_masked:])


def _tokenize_two(turns, tokenizer, template, has_image, image_token_id, sample_id) -> TokenizedConversation:
    if turns and ROLE_OF[turns[0]["from"]] != 0:
        turns = turns[1:]  # preprocess_v1 drops a leading assistant turn
    prompt = template.render([(ROLE_OF[t["from"]], t["value"]) for t in turns])
    max_length = tokenizer.model_max_length

    def count(text: str) -> int:
        if has_image:
            return len(tokenizer_image_token(text, tokenizer, image_token_id))
        return len(tokenizer(text).input_ids)

    if has_image:  # LLaVA truncates only text-only samples here; the collator cuts the rest
        ids = tokenizer_image_token(prompt, tokenizer, image_token_id)
    else:
        ids = tokenizer(prompt, max_length=max_length, truncation=True).input_ids
    labels = list(ids)

    # preprocess_v1's arithmetic: split the prompt into rounds at sep2 ("</s>"), mask each round's
    # instruction up to and including "ASSISTANT:", keep the answer and its "</s>".
    answer_sep = template.sep + template.roles[1] + ": "
    cur_len = 1
    labels[:cur_len] = [IGNORE_INDEX] * cur_len  # BOS
    for i, round_text in enumerate(prompt.split(template.sep2)):
        if round_text == "":
            break
        parts = round_text.split(answer_sep)
        if len(parts) != 2:
            break
        round_len = count(round_text)  # its BOS stands in for the "</s>" removed by the split
        instruction_len = count(parts[0] + answer_sep) - 2  # minus BOS and the dangling "▁" of ": "
        # A non-legacy SentencePiece tokenizer adds no "▁" after "</s>", but a round tokenised on its
        # own gets one (train.py; tokenizers >= 0.14, which transformers 5 requires).
        if i != 0 and not getattr(tokenizer, "legacy", False):
            round_len -= 1
            instruction_len -= 1
        labels[cur_len : cur_len + instruction_len] = [IGNORE_INDEX] * len(
            labels[cur_len : cur_len + instruction_len]
        )
        cur_len += round_len
    labels[cur_len:] = [IGNORE_INDEX] * len(labels[cur_len:])
    # LLaVA compares with the count of non-pad ids; pad is <unk> there, which miscounts a literal <unk>.
    if cur_len < max_length and cur_len != len(ids):
        raise MaskingMismatch(
            f"sample {sample_id}: label masking covers {cur_len} tokens but the conversation has {len(ids)}; "
            f"the tokenizer does not match the {template.name!r} template (wrong --template or tokenizer?)"
        )
    return TokenizedConversation(ids, labels)


def expand_image_tokens(
    ids: TokenizedConversation, image_token_id: int, num_tokens: list[int]
) -> TokenizedConversation:
    """Replace the i-th `image_token_id` by `num_tokens[i]` copies (labels IGNORE_INDEX); the result has
    length L - len(num_tokens) + sum(num_tokens)."""
    positions = [i for i, t in enumerate(ids.input_ids) if t == image_token_id]
    if len(positions) != len(num_tokens):
        raise ValueError(f"{len(positions)} image tokens in the text but {len(num_tokens)} images")
    input_ids: list[int] = []
    labels: list[int] = []
    start = 0
    for pos, n in zip(positions, num_tokens):
        input_ids += ids.input_ids[start:pos] + [image_token_id] * n
        labels += ids.labels[start:pos] + [IGNORE_INDEX] * n
        start = pos + 1
    return TokenizedConversation(input_ids + ids.input_ids[start:], labels + ids.labels[start:])
