"""`RadioLlavaProcessor`: text and images in, inputs for transformers' `LlavaForConditionalGeneration` with a
RADIO tower out; a transformers `ProcessorMixin` (tokenizer + `RadioImageProcessor`).

Each `<image>` in the text becomes as many `<image>` tokens as its image has tokens, the number that
`RadioImageProcessor.num_image_tokens` gives for it (a 640x480 photo resized to 432x324 and padded to 432x336
at patch 16 costs 27x21 = 567 tokens), not a fixed `image_seq_length`. Text is tokenised as LLaVA-1.5 does
(`tokenizer_image_token`: each chunk between images on its own), so prompts at evaluation match the
sequences seen in training.

Images of different sizes share one batch: `pixel_values` (N, 3, H_max, W_max) padded bottom/right, and
`image_sizes` (N, 2) holds each image's padded (height, width) in px, multiples of the patch size, from
which the vision tower crops each image and `LlavaModel.get_image_features` splits the features.

Saved with every run (`processor_config.json`), so `AutoProcessor.from_pretrained(run)` returns it after
`import radio_vlm`; exported next to the weights for `trust_remote_code` (imports only torch, numpy,
transformers and sibling files).
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BatchFeature
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.processing_utils import MultiModalData, ProcessorMixin

from .image_io import ImageSource
from .image_processing_radio import RadioImageProcessor

IMAGE_TAG = "<image>"
# call-time options besides images and text; the others transformers' callers pass are refused by name
_TEXT_OPTIONS = ("return_tensors", "padding", "add_special_tokens", "sanitize_control_tokens")
_IMAGE_OPTIONS = ("resize_mode", "long_edge")


def add_image_token(tokenizer) -> int:
    """Add `<image>` as a special token (idempotent) and return its id; the LLM's embeddings must then be
    resized to `len(tokenizer)`."""
    if IMAGE_TAG not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TAG]})
    return tokenizer.convert_tokens_to_ids(IMAGE_TAG)


def tokenizer_image_token(prompt: str, tokenizer, image_token_id: int) -> list[int]:
    """Token ids of `prompt` with each `<image>` as one `image_token_id`.

    Like LLaVA's `tokenizer_image_token` (llava/mm_utils.py): every text chunk between tags is tokenised on
    its own (so the text after an image starts with the SentencePiece dummy prefix), and only the first BOS
    is kept.
    """
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(IMAGE_TAG)]
    offset = int(bool(chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id))
    ids = chunks[0][:1] if offset else []
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids.append(image_token_id)
        ids.extend(chunk[offset:])
    return ids


def pad_images(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch (3, h_i, w_i) images: (N, 3, H_max, W_max) zero-padded bottom/right, and sizes (N, 2) = (h_i, w_i).

    The padding is never seen by the model: the vision tower crops each image back to its size.
    """
    height = max(image.shape[-2] for image in images)
    width = max(image.shape[-1] for image in images)
    batch = torch.stack([F.pad(im, (0, width - im.shape[-1], 0, height - im.shape[-2])) for im in images])
    return batch, torch.tensor([list(image.shape[-2:]) for image in images], dtype=torch.long)


class RadioLlavaProcessor(ProcessorMixin):
    r"""Tokenizer + `RadioImageProcessor` for a RADIO-LLaVA model.

    `processor(images=..., text=...)` returns a `BatchFeature` of torch tensors: input_ids (B, L),
    attention_mask (B, L) and, when there are images, pixel_values (N, 3, H, W) in [0, 1] and image_sizes
    (N, 2) (see the module docstring). `text` is a prompt or a list of prompts, each with as many `<image>`
    tags as it has images; `images` lists the images of all prompts in order (any kind
    `radio_vlm.models.image_io.load_image` reads; a list of lists per prompt is flattened). Rows are padded
    on the tokenizer's side (set `tokenizer.padding_side = "left"` for batched generation).

    Args:
        tokenizer: the LLM's tokenizer; `<image>` is added to it if missing.
        image_processor: the `RadioImageProcessor` the model was trained with.
        chat_template: optional Jinja template for `apply_chat_template`.
    """

    model_input_names = ["input_ids", "attention_mask", "pixel_values", "image_sizes"]

    def __init__(self, tokenizer, image_processor: RadioImageProcessor, chat_template: str | None = None):
        self.image_token = IMAGE_TAG
        self.image_token_id = add_image_token(tokenizer)
        super().__init__(tokenizer, image_processor, chat_template=chat_template)

    @property
    def patch_size(self) -> int:
        return self.image_processor.patch_size

    def process_image(self, image: ImageSource, name: str | None = None, **size_kwargs) -> torch.Tensor:
        """One image -> (3, h, w) in [0, 1], resized and padded to multiples of the patch size; raises
        ValueError naming the image (`name`, or its path) if it cannot be read. `size_kwargs`: resize_mode,
        long_edge for this call."""
        try:
            out = self.image_processor.preprocess([image], pack=False, **size_kwargs)
        except ValueError as err:
            raise ValueError(f"{name}: {err}" if name else str(err)) from err
        return out["pixel_values"][0]

    def num_image_tokens(self, pixel_values: torch.Tensor) -> int:
        """Image tokens of one processed (3, h, w) image: `RadioImageProcessor.num_padded_image_tokens` of its
        size (the patch grid, merged by the image processor's `token_merge`), which is what
        `RadioImageProcessor.num_image_tokens` gives for the original image."""
        return self.image_processor.num_padded_image_tokens(*pixel_values.shape[-2:])

    def __call__(
        self,
        images: ImageSource | list | None = None,
        text: str | list[str] | None = None,
        videos: None = None,
        audio: None = None,
        **kwargs,
    ) -> BatchFeature:
        """Inputs for the model (see the class docstring). `kwargs`: return_tensors ("pt"), padding (always to
        the longest), add_special_tokens (False drops the BOS), resize_mode / long_edge for the images of this
        call; `sanitize_control_tokens` (from apply_chat_template) is accepted and has nothing to do here."""
        if videos is not None or audio is not None:
            raise ValueError("RadioLlavaProcessor takes images and text only (no videos or audio)")
        if text is None:
            raise ValueError(
                f"pass text: a prompt with one {IMAGE_TAG} per image, e.g. 'USER: {IMAGE_TAG}\\n...'"
            )
        unknown = sorted(set(kwargs) - set(_TEXT_OPTIONS) - set(_IMAGE_OPTIONS))
        if unknown:
            raise TypeError(
                f"RadioLlavaProcessor got unknown arguments {unknown}; it takes images, text, "
                f"{', '.join(_TEXT_OPTIONS + _IMAGE_OPTIONS)}"
            )
        if kwargs.get("return_tensors") not in (None, "pt"):
            raise ValueError(
                f"return_tensors={kwargs['return_tensors']!r}: RadioLlavaProcessor returns torch tensors"
            )
        if kwargs.get("padding", True) not in (True, "longest"):
            raise ValueError(f"padding={kwargs['padding']!r}: rows are always padded to the longest")
        prompts = [text] if isinstance(text, str) else list(text)
        images = _flat_images(images)
        num_tags = sum(p.count(IMAGE_TAG) for p in prompts)
        if num_tags != len(images):
            raise ValueError(
                f"the text has {num_tags} {IMAGE_TAG} tags but {len(images)} images were given: "
                f"put one {IMAGE_TAG} in the prompt per image"
            )
        size_kwargs = {k: kwargs[k] for k in _IMAGE_OPTIONS if k in kwargs}
        pixels = [self.process_image(image, f"image {i}", **size_kwargs) for i, image in enumerate(images)]
        counts = iter(self.num_image_tokens(image) for image in pixels)
        sequences = []
        for prompt in prompts:
            ids = tokenizer_image_token(prompt, self.tokenizer, self.image_token_id)
            if not kwargs.get("add_special_tokens", True) and ids[:1] == [self.tokenizer.bos_token_id]:
                ids = ids[1:]
            image = self.image_token_id
            sequences.append(
                [t for token in ids for t in ([token] * next(counts) if token == image else [token])]
            )
        data = dict(self.tokenizer.pad({"input_ids": sequences}, return_tensors="pt"))
        if pixels:
            data["pixel_values"], data["image_sizes"] = pad_images(pixels)
        return BatchFeature(data=data)

    def _get_num_multimodal_tokens(
        self, image_sizes: list[list[int]] | None = None, **kwargs
    ) -> MultiModalData:
        """Placeholder tokens per image of original (height, width) `image_sizes` (vLLM's transformers backend
        asks for them)."""
        if image_sizes is None:
            return MultiModalData()
        return MultiModalData(
            num_image_tokens=[self.image_processor.num_image_tokens(h, w) for h, w in image_sizes],
            num_image_patches=[1] * len(image_sizes),
        )

    def save_pretrained(self, save_directory: str | os.PathLike, *args, export_code: bool = False, **kwargs):
        """`ProcessorMixin.save_pretrained` (tokenizer files and processor_config.json); with `export_code=True`
        also this file and the image processor's code with `auto_map`s, so `AutoProcessor.from_pretrained(dir,
        trust_remote_code=True)` works without `radio_vlm`."""
        if not export_code:
            return super().save_pretrained(save_directory, *args, **kwargs)
        exported = copy.copy(self)  # the auto_maps are for the saved files; this object stays as it was
        exported.auto_map = {"AutoProcessor": f"{Path(__file__).stem}.{type(self).__name__}"}
        exported.image_processor = copy.copy(self.image_processor)
        image_processor_class = type(self.image_processor)
        exported.image_processor.auto_map = {
            "AutoImageProcessor": f"{image_processor_class.__module__.rsplit('.', 1)[-1]}.{image_processor_class.__name__}"
        }
        result = super(RadioLlavaProcessor, exported).save_pretrained(save_directory, *args, **kwargs)
        for source in [__file__, *get_relative_import_files(__file__)]:
            shutil.copyfile(source, Path(save_directory) / Path(source).name)
        return result


def _flat_images(images) -> list:
    """None, one image, a list of images, or a list of per-prompt lists (apply_chat_template's) -> a list."""
    if images is None:
        return []
    if isinstance(images, torch.Tensor | np.ndarray) and images.ndim == 4:
        return list(images)
    if not isinstance(images, list | tuple):
        return [images]
    flat = []
    for item in images:
        flat.extend(item if isinstance(item, list | tuple) else [item])
    return [image for image in flat if image is not None]
