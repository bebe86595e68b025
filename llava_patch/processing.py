"""`RadioLlavaProcessor` for llava_patch: the class lives in `radio_vlm.models.processing_radio_llava` (it is
exported with the model for `trust_remote_code`); this module makes one with LLaVA-1.5's chat template and
loads one from a run with a clear error.

    processor = make_processor(tokenizer, image_processor)   # what a run saves
    processor = load_processor("ckpt/finetune")              # = AutoProcessor.from_pretrained("ckpt/finetune")
"""

from __future__ import annotations

from pathlib import Path

from transformers.utils import PROCESSOR_NAME

from radio_vlm.models.image_processing_radio import RadioImageProcessor
from radio_vlm.models.processing_radio_llava import RadioLlavaProcessor, add_image_token, pad_images

from .conversation import get_template

__all__ = ["RadioLlavaProcessor", "add_image_token", "load_processor", "make_processor", "pad_images"]
# the conversation of LLaVA-1.5's fine-tuned models, which `radio-llava generate` prompts with (--conv-mode)
CHAT_TEMPLATE = "vicuna_v1"


class MissingProcessorError(FileNotFoundError):
    """A model folder without the `RadioLlavaProcessor` that AutoProcessor and pipeline() need."""


def make_processor(tokenizer, image_processor: RadioImageProcessor) -> RadioLlavaProcessor:
    """A `RadioLlavaProcessor` whose `apply_chat_template` (and `pipeline(...)` given chat messages) renders
    LLaVA-1.5's vicuna_v1 prompt, the one `radio-llava generate` builds."""
    return RadioLlavaProcessor(
        tokenizer, image_processor, chat_template=get_template(CHAT_TEMPLATE).chat_template()
    )


def load_processor(directory: str | Path) -> RadioLlavaProcessor:
    """The `RadioLlavaProcessor` saved in a run, checkpoint or exported folder.

    Raises `MissingProcessorError` naming the folder and the command that writes one when the folder has no
    processor_config.json (a run saved before processors were saved with runs, or a model saved alone).
    """
    directory = Path(directory)
    if not (directory / PROCESSOR_NAME).is_file():
        raise MissingProcessorError(
            f"{directory} has no processor ({PROCESSOR_NAME}: tokenizer + RadioImageProcessor), so AutoProcessor "
            f"and pipeline() cannot load it; write a folder with one: radio-llava export {directory} "
            f"{directory.name}-exported (it builds the processor from the tokenizer files and "
            "preprocessor_config.json in the folder)"
        )
    return RadioLlavaProcessor.from_pretrained(directory)
