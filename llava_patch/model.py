"""Assemble and load RADIO-LLaVA: transformers' stock `LlavaForConditionalGeneration` with
`RadioLlavaVisionModel` as vision tower, LLaVA-1.5's `mlp2x_gelu` projector and a LLaMA/Vicuna LLM.

    from llava_patch.model import build, load_pretrained
    model, processor = build("tiny-radio", "tiny-llama")            # or local folders
    model.save_pretrained(out); processor.save_pretrained(out)      # what `radio-llava train` writes
    model, processor = load_pretrained(out)                         # any saved run or checkpoint folder
    set_token_budget(model, processor, max_image_tokens=256)        # evaluate at another token budget
    inputs = processor(images=[image], text="USER: <image>\\nWhat is it? ASSISTANT:")
    ids = model.generate(**inputs, max_new_tokens=16)

Both arguments of `build` take a local folder or a registered tiny twin (`radio_vlm.tiny.list_tiny_models()`,
`llava_patch.llm.list_tiny_llms()`); a vision folder holds a `RadioWithAdaptors` (e.g. from
`radio-vlm convert`) or a `RadioLlavaVisionModel`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration, PreTrainedModel
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.modeling_utils import set_zero3_state
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from radio_vlm import (  # importing radio_vlm registers its Auto classes
    RadioLlavaVisionConfig,
    RadioLlavaVisionModel,
    RadioWithAdaptors,
)
from radio_vlm.models.image_processing_radio import RadioImageProcessor
from radio_vlm.tiny import build_tiny_radio, list_tiny_models

from .llm import load_llm
from .processing import RadioLlavaProcessor, add_image_token, load_processor, make_processor

PROJECTORS = (
    "mlp2x_gelu",
)  # LLaVA-1.5's: Linear -> GELU -> Linear, = transformers' LlavaMultiModalProjector
# Patch tokens at the paper's LLaVA resolution: long edge 432 px, patch 16 -> at most 27 x 27.
LONG_EDGE = 432


def gathered(params: Iterable[torch.nn.Parameter], modifier_rank: int | None = None):
    """Context in which parameters that DeepSpeed ZeRO-3 partitioned are whole on every rank (a no-op
    without ZeRO-3). With `modifier_rank`, that rank's changes are broadcast to the others on exit."""
    if not is_deepspeed_zero3_enabled():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=modifier_rank)


def load_vision_tower(
    name_or_path: str | RadioLlavaVisionModel,
    feature_sources: list[str] | None = None,
    output_layernorm: bool = False,
    trainable: bool = False,
    dtype: torch.dtype = torch.float32,
    token_merge: str | None = None,
) -> RadioLlavaVisionModel:
    """A `RadioLlavaVisionModel` in `dtype` from a tiny twin name, a `RadioWithAdaptors` folder or a saved
    tower folder (whose own settings apply, except a `token_merge` given here: "none" | "unshuffle:s" |
    "pool:s"). Under DeepSpeed ZeRO-3 a folder loads partitioned across the ranks (`zero.Init`)."""
    if isinstance(name_or_path, RadioLlavaVisionModel):
        return name_or_path
    settings = {
        "feature_sources": feature_sources,
        "output_layernorm": output_layernorm,
        "trainable": trainable,
        "token_merge": token_merge or "none",
    }
    if name_or_path in list_tiny_models():
        return RadioLlavaVisionModel.from_radio(build_tiny_radio(name_or_path).to(dtype), **settings)
    config_file = Path(name_or_path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"--vision-tower {name_or_path!r} is neither a folder with config.json nor a tiny twin "
            f"({list_tiny_models()}); convert an official RADIO checkpoint with `radio-vlm convert`"
        )
    if json.loads(config_file.read_text()).get("model_type") == RadioLlavaVisionConfig.model_type:
        config = RadioLlavaVisionConfig.from_pretrained(name_or_path)
        if token_merge is not None:
            config = with_token_merge(config, token_merge)
        return RadioLlavaVisionModel.from_pretrained(name_or_path, config=config, dtype=dtype)
    radio = RadioWithAdaptors.from_pretrained(name_or_path, dtype=dtype)
    return RadioLlavaVisionModel.from_radio(radio, **settings)


def build_model(
    vision_tower: str | RadioLlavaVisionModel,
    llm: str | PreTrainedModel,
    projector: str = "mlp2x_gelu",
    tokenizer=None,
) -> LlavaForConditionalGeneration:
    """`LlavaForConditionalGeneration` from a RADIO tower and a causal LM, with a new randomly initialised
    projector (PyTorch's default Linear init, as LLaVA). `<image>` is added to `tokenizer` (needed when
    `llm` is a model; loaded with it when `llm` is a name) and the embeddings resized (new rows = mean).
    To get the matching processor (tokenizer with `<image>` + image processor) too, use `build`."""
    if projector not in PROJECTORS:
        raise ValueError(f"projector {projector!r} is not supported: choose one of {PROJECTORS}")
    tower = load_vision_tower(vision_tower)
    if not isinstance(llm, PreTrainedModel):
        llm, tokenizer = load_llm(llm)
    if tokenizer is None:
        raise ValueError("build_model(llm=<model>) needs the LLM's tokenizer: pass tokenizer=")
    image_token_id = add_image_token(tokenizer)
    config = LlavaConfig(
        vision_config=tower.config,
        text_config=llm.config,
        image_token_id=image_token_id,
        vision_feature_layer=-1,  # the tower answers every layer request with its feature_sources
        vision_feature_select_strategy="full",  # the tower already dropped CLS/register tokens
        projector_hidden_act="gelu",
        image_seq_length=(LONG_EDGE // tower.patch_size) ** 2,  # informational only
        tie_word_embeddings=getattr(llm.config, "tie_word_embeddings", False),
    )
    # placeholders only: the real tower and LLM modules are moved in below. `set_zero3_state` tells
    # transformers that ZeRO-3's zero.Init is handled here, so it does not partition (and initialise) the
    # meta placeholders it builds for the sub-models
    with torch.device("meta"), set_zero3_state():
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = tower
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    dtype = next(llm.parameters()).dtype
    model.model.multi_modal_projector = LlavaMultiModalProjector(config).to(dtype)
    _resize_embeddings(model, len(tokenizer))
    return model


def _resize_embeddings(model: LlavaForConditionalGeneration, num_tokens: int) -> None:
    """Grow the vocabulary to `num_tokens`; new input and output rows = the mean of the old ones, as LLaVA's
    `smart_tokenizer_and_embedding_resize` (deterministic, so a LoRA base can be rebuilt exactly)."""
    old = model.get_input_embeddings().num_embeddings
    model.resize_token_embeddings(num_tokens, mean_resizing=False)
    model.config.text_config.vocab_size = num_tokens
    weights = {model.get_input_embeddings().weight, model.get_output_embeddings().weight}  # once if tied
    with torch.no_grad(), gathered(weights, modifier_rank=0):
        for weight in weights:
            weight[old:] = weight[:old].mean(0, keepdim=True)


def build(
    vision_tower: str,
    llm: str,
    projector: str = "mlp2x_gelu",
    feature_sources: list[str] | None = None,
    output_layernorm: bool = False,
    trainable_vision_tower: bool = False,
    long_edge: int | None = None,
    dtype: torch.dtype = torch.float32,
    token_merge: str | None = None,
    max_image_tokens: int | None = None,
) -> tuple[LlavaForConditionalGeneration, RadioLlavaProcessor]:
    """A new RADIO-LLaVA model and its processor: images resized on the long edge to `long_edge` px
    (default 432, the paper's setting, or the tower's max resolution if smaller); every weight in `dtype`,
    whatever dtype the checkpoints were saved in. Under DeepSpeed ZeRO-3 (a `TrainingArguments` with a
    ZeRO-3 config alive) the tower and LLM folders load partitioned across the ranks. Token budget:
    `token_merge` ("none" | "unshuffle:s" | "pool:s", merged in the tower; the projector's input width
    follows) and `max_image_tokens` (a per-image cap applied by the processor); both are saved with the
    model (vision config, the processor's image processor)."""
    tower = load_vision_tower(
        vision_tower,
        feature_sources,
        output_layernorm,
        trainable_vision_tower,
        dtype=dtype,
        token_merge=token_merge,
    )
    llm_model, tokenizer = load_llm(llm, dtype)
    model = build_model(tower, llm_model, projector, tokenizer=tokenizer)
    radio_config = tower.config.radio_config
    if long_edge is None:
        long_edge = min(LONG_EDGE, radio_config.max_resolution or LONG_EDGE)
    image_processor = RadioImageProcessor.from_model_config(
        radio_config,
        long_edge=long_edge,
        token_merge=tower.config.token_merge,
        max_image_tokens=max_image_tokens,
    )
    return model, make_processor(tokenizer, image_processor)


def with_token_merge(config: RadioLlavaVisionConfig, token_merge: str) -> RadioLlavaVisionConfig:
    """A copy of `config` with another token merge (`hidden_size` derived anew)."""
    return RadioLlavaVisionConfig(**{**config.to_dict(), "token_merge": token_merge})


def set_token_budget(
    model: LlavaForConditionalGeneration,
    processor: RadioLlavaProcessor,
    token_merge: str | None = None,
    max_image_tokens: int | None = None,
) -> None:
    """Run a trained model at another token budget (None keeps what it was saved with): a merge whose
    output width fits the trained projector ("none" <-> "pool:s", or unshuffle with the same s), and/or
    another per-image cap. Raises ValueError naming the setting when the projector cannot take it."""
    tower = model.model.vision_tower
    settings = processor.image_processor.to_dict()
    if token_merge is not None:
        config = with_token_merge(tower.config, token_merge)
        width = model.model.multi_modal_projector.linear_1.in_features
        if config.hidden_size != width:
            raise ValueError(
                f"token_merge={token_merge!r} gives {config.hidden_size}-wide image tokens but this model's "
                f"projector takes {width} (the tower has token_merge={tower.config.token_merge!r}): "
                "pass a merge of the same width (none and pool:s keep the width, unshuffle:s multiplies it "
                "by s^2)"
            )
        tower.config = model.config.vision_config = config
        settings["token_merge"] = token_merge
    if max_image_tokens is not None:
        settings["max_image_tokens"] = max_image_tokens
    processor.image_processor = type(processor.image_processor).from_dict(settings)


def load_pretrained(
    directory: str | Path, dtype: torch.dtype | None = None
) -> tuple[LlavaForConditionalGeneration, RadioLlavaProcessor]:
    """(model, processor) saved by `radio-llava train` (an output folder or a `checkpoint-N` folder with
    full weights; for LoRA runs, `radio-llava merge-lora` first)."""
    processor = load_processor(directory)  # first: a folder without one fails before the weights load
    return LlavaForConditionalGeneration.from_pretrained(directory, dtype=dtype), processor
