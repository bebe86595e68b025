"""Named shims that let the original LLaVA package (llava-torch 1.2.2.post1, written for transformers
4.37) import and run on the transformers this project runs on. Each shim restores one removed name or
accepts one renamed argument; none changes what LLaVA computes. Used by the parity tests and by the
original-LLaVA integration (`llava_patch.install()`, `python -m llava_patch.run`).

Shims that patch LLaVA's classes import the LLaVA module they patch, so they run after the import-time
shims above them in `SHIMS` (the dict is ordered).
"""

from __future__ import annotations

import importlib

import transformers.trainer
from transformers import pytorch_utils


def _all_layernorm_layers() -> None:
    # llava/train/llava_trainer.py imports ALL_LAYERNORM_LAYERS from transformers.trainer (its
    # optimizer's no-decay rule); transformers 5 keeps the list only in transformers.pytorch_utils.
    if not hasattr(transformers.trainer, "ALL_LAYERNORM_LAYERS"):
        transformers.trainer.ALL_LAYERNORM_LAYERS = pytorch_utils.ALL_LAYERNORM_LAYERS


def _shim_once(owner, name: str, make):
    """Replace `owner.name` by `make(current)` unless a shim already did."""
    current = getattr(owner, name)
    if not getattr(current, "_llava_compat_shim", False):
        replacement = make(current)
        replacement._llava_compat_shim = True
        setattr(owner, name, replacement)


def _causal_lms():
    """LLaVA's causal LMs built on a transformers LM, each with the transformers class it extends."""
    from llava.model.language_model.llava_llama import LlamaForCausalLM, LlavaLlamaForCausalLM
    from llava.model.language_model.llava_mistral import LlavaMistralForCausalLM, MistralForCausalLM

    return [(LlavaLlamaForCausalLM, LlamaForCausalLM), (LlavaMistralForCausalLM, MistralForCausalLM)]


def _forward_takes_cache() -> None:
    # transformers 5 renamed `past_key_values` to `cache` in forward() and passes it (and loss kwargs such
    # as `num_items_in_batch`) from generate() and Trainer; LLaVA's forward has a closed signature. This is
    # LLaVA's forward (multimodal preparation unless inputs_embeds is given, then the LM) with the new names.
    for llava_cls, lm_cls in _causal_lms():

        def make(_, lm_cls=lm_cls):
            def forward(
                self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, images=None, image_sizes=None, past_key_values=None, **kwargs,
            ):  # fmt: skip
                cache = past_key_values if cache is None else cache
                if inputs_embeds is None:
                    input_ids, position_ids, attention_mask, cache, inputs_embeds, labels = (
                        self.prepare_inputs_labels_for_multimodal(
                            input_ids, position_ids, attention_mask, cache, labels, images, image_sizes
                        )
                    )
                return lm_cls.forward(
                    self, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    cache=cache, inputs_embeds=inputs_embeds, labels=labels, **kwargs,
                )  # fmt: skip

            return forward

        _shim_once(llava_cls, "forward", make)


def _generation_inputs_take_cache() -> None:
    # LLaVA's prepare_inputs_for_generation passes `past_key_values=` to transformers 5's, which now takes
    # `cache` (and warns on every step). Same behaviour: re-attach `images` / `image_sizes`; generate()
    # looks for `inputs_embeds` in the signature before it accepts them (LLaVA's generate passes them).
    for llava_cls, lm_cls in _causal_lms():

        def make(_, lm_cls=lm_cls):
            def prepare_inputs_for_generation(self, input_ids, inputs_embeds=None, **kwargs):
                extra = {
                    key: kwargs.pop(key) for key in ("images", "image_sizes") if kwargs.get(key) is not None
                }
                inputs = lm_cls.prepare_inputs_for_generation(
                    self, input_ids, inputs_embeds=inputs_embeds, **kwargs
                )
                return {**inputs, **extra}

            return prepare_inputs_for_generation

        _shim_once(llava_cls, "prepare_inputs_for_generation", make)


def _trainer_tokenizer_kwarg() -> None:
    # llava/train/train.py builds LLaVATrainer(tokenizer=...); transformers 5 names it processing_class.
    from llava.train.llava_trainer import LLaVATrainer

    def make(trainer_init):
        def __init__(self, *args, tokenizer=None, **kwargs):
            if tokenizer is not None:
                kwargs.setdefault("processing_class", tokenizer)
            trainer_init(self, *args, **kwargs)

        return __init__

    _shim_once(LLaVATrainer, "__init__", make)


def _train_sampler_takes_dataset() -> None:
    # transformers 5 calls _get_train_sampler(train_dataset); LLaVATrainer's override takes no argument
    # (it always samples self.train_dataset, the only data set LLaVA's train() passes).
    from llava.train.llava_trainer import LLaVATrainer

    def make(get_train_sampler):
        def _get_train_sampler(self, train_dataset=None):
            return get_train_sampler(self)

        return _get_train_sampler

    _shim_once(LLaVATrainer, "_get_train_sampler", make)


SHIMS = {
    "transformers.trainer.ALL_LAYERNORM_LAYERS": _all_layernorm_layers,
    "LlavaLlamaForCausalLM.forward(cache=...)": _forward_takes_cache,
    "LlavaLlamaForCausalLM.prepare_inputs_for_generation(cache=...)": _generation_inputs_take_cache,
    "LLaVATrainer(tokenizer=...)": _trainer_tokenizer_kwarg,
    "LLaVATrainer._get_train_sampler(train_dataset)": _train_sampler_takes_dataset,
}

# Command-line flags LLaVA's scripts/v1_5/*.sh pass that transformers 5's TrainingArguments renamed.
RENAMED_FLAGS = {"--evaluation_strategy": "--eval_strategy"}


def rename_flags(argv: list[str]) -> list[str]:
    """`argv` with every flag of `RENAMED_FLAGS` (also in `--flag=value` form) under its new name."""
    renamed = []
    for arg in argv:
        flag, sep, value = arg.partition("=")
        renamed.append(RENAMED_FLAGS.get(flag, flag) + sep + value)
    return renamed


def install_llava_compat() -> None:
    """Apply every shim in `SHIMS` (idempotent)."""
    for shim in SHIMS.values():
        shim()


def import_original_llava(module: str = "llava.train.train"):
    """Import a module of the original LLaVA package after installing the shims; its import errors are
    raised as they are (LLaVA's own `llava/model/__init__.py` hides them)."""
    install_llava_compat()
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"cannot import the original LLaVA ({module}): {e}. Install it without its pinned dependencies: "
            "pip install --no-deps llava-torch==1.2.2.post1"
        ) from e
