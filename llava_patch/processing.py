"""`RadioLlavaProcessor`: text and images in, inputs for transformers' `LlavaForConditionalGeneration` out.

Each `<image>` in the text becomes exactly as many `<image>` tokens as its image has RADIO patch tokens
(an image resized to 432x324 and padded to 432x336 at patch 16 costs 27x21 = 567 tokens). Text is
tokenised as LLaVA-1.5 does (`tokenizer_image_token`: each chunk between images on its own), so prompts
at evaluation match the sequences seen in training.

Images of different sizes share one batch: `pixel_values` (N, 3, H_max, W_max) padded bottom/right, and
`image_sizes` (N, 2) holds each image's padded (height, width) in px, multiples of the patch size, from
which the vision tower crops each image and `LlavaModel.get_image_features` splits the features.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, BatchFeature

from radio_vlm.models.image_io import ImageSource
from radio_vlm.models.image_processing_radio import RadioImageProcessor

from .conversation import IMAGE_TAG, TokenizedConversation, expand_image_tokens, tokenizer_image_token
from .llm import configure_tokenizer


def add_image_token(tokenizer) -> int:
    """Add `<image>` as a special token (idempotent) and return its id; the LLM's embeddings must then be
    resized to `len(tokenizer)`."""
    if IMAGE_TAG not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TAG]})
    return tokenizer.convert_tokens_to_ids(IMAGE_TAG)


def pad_images(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch (3, h_i, w_i) images: (N, 3, H_max, W_max) zero-padded bottom/right, and sizes (N, 2) = (h_i, w_i).

    The padding is never seen by the model: the vision tower crops each image back to its size.
    """
    height = max(image.shape[-2] for image in images)
    width = max(image.shape[-1] for image in images)
    batch = torch.stack([F.pad(im, (0, width - im.shape[-1], 0, height - im.shape[-2])) for im in images])
    return batch, torch.tensor([list(image.shape[-2:]) for image in images], dtype=torch.long)


class RadioLlavaProcessor:
    """Tokenizer + `RadioImageProcessor` for a RADIO-LLaVA model.

    `processor(text, images)` returns a `BatchFeature` with input_ids (B, L), attention_mask (B, L) and,
    when there are images, pixel_values (N, 3, H, W) and image_sizes (N, 2) (see the module docstring).
    `text` is a prompt or a list of prompts, each with as many `<image>` tags as it has images; `images`
    lists the images of all prompts in order. Pad side is the tokenizer's (set "left" for batched
    generation).
    """

    def __init__(self, tokenizer, image_processor: RadioImageProcessor):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token_id = add_image_token(tokenizer)

    @property
    def patch_size(self) -> int:
        return self.image_processor.patch_size

    def process_image(self, image: ImageSource, name: str | None = None) -> torch.Tensor:
        """One image -> (3, h, w) in [0, 1], resized and padded to multiples of the patch size; raises
        ValueError naming the image (`name`, or its path) if it cannot be read."""
        try:
            out = self.image_processor.preprocess([image], pack=False)
        except ValueError as err:
            raise ValueError(f"{name}: {err}" if name else str(err)) from err
        return out["pixel_values"][0]

    def num_image_tokens(self, image: torch.Tensor) -> int:
        """Patch tokens of a processed (3, h, w) image: (h / p) * (w / p)."""
        return (image.shape[-2] // self.patch_size) * (image.shape[-1] // self.patch_size)

    def expand(self, ids: TokenizedConversation, images: list[torch.Tensor]) -> TokenizedConversation:
        """Widen each `<image>` id to its processed image's number of patch tokens."""
        return expand_image_tokens(ids, self.image_token_id, [self.num_image_tokens(im) for im in images])

    def __call__(
        self, text: str | list[str], images: ImageSource | list[ImageSource] | None = None, **_
    ) -> BatchFeature:
        prompts = [text] if isinstance(text, str) else list(text)
        images = [] if images is None else images if isinstance(images, list | tuple) else [images]
        num_tags = sum(p.count(IMAGE_TAG) for p in prompts)
        if num_tags != len(images):
            raise ValueError(
                f"the text has {num_tags} {IMAGE_TAG} tags but {len(images)} images were given: "
                f"put one {IMAGE_TAG} in the prompt per image"
            )
        pixels = [self.process_image(image, f"image {i}") for i, image in enumerate(images)]
        sequences, start = [], 0
        for prompt in prompts:
            ids = tokenizer_image_token(prompt, self.tokenizer, self.image_token_id)
            n = prompt.count(IMAGE_TAG)
            sequences.append(
                self.expand(TokenizedConversation(ids, ids), pixels[start : start + n]).input_ids
            )
            start += n
        data = self.tokenizer.pad({"input_ids": sequences}, return_tensors="pt")
        if pixels:
            data["pixel_values"], data["image_sizes"] = pad_images(pixels)
        return BatchFeature(data=dict(data))

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def save_pretrained(self, save_directory: str | Path) -> None:
        """Tokenizer files and `preprocessor_config.json`, loadable with `from_pretrained`."""
        self.tokenizer.save_pretrained(save_directory)
        self.image_processor.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> RadioLlavaProcessor:
        tokenizer = configure_tokenizer(AutoTokenizer.from_pretrained(directory))
        return cls(tokenizer, RadioImageProcessor.from_pretrained(directory))
