"""RADIO inside the original LLaVA codebase (haotian-liu/LLaVA, package `llava`), without forking it.

`install()` does three things to an imported `llava`, each idempotent:

1. **Tower builder.** `build_vision_tower` accepts `radio:<path-or-tiny-name>[:k=v,...]` (see
   `llava_patch.vision_tower.parse_radio_tower_name`) and returns a `radio_vlm.RadioVisionTower`; every
   other name goes to LLaVA's own builder. `llava.model.llava_arch` copied the builder at import time
   (`from .multimodal_encoder.builder import build_vision_tower`), so every loaded module that holds the
   original function by name is patched, not only the builder module.
2. **Differently sized images in one batch.** LLaVA's `prepare_inputs_labels_for_multimodal`
   `torch.cat`s a list of images before encoding, which fails unless all share one size. The
   replacement below encodes a list through the tower's list contract (one (N_i, D) feature block per
   image) and then splices exactly as LLaVA does: one image consumed per `<image>` (-200) and per
   text-only sample, image positions labelled IGNORE_INDEX, truncation to
   `config.tokenizer_model_max_length`, re-padding on `config.tokenizer_padding_side`. Inputs LLaVA-1.6
   handles (5-D anyres stacks, `mm_patch_merge_type` other than "flat") go to the original.
3. **Compatibility shims** for the current transformers (`llava_patch.compat.SHIMS`, named there).
"""

from __future__ import annotations

import sys

import torch

from llava_patch.conversation import IGNORE_INDEX
from llava_patch.conversation import LLAVA_IMAGE_TOKEN_INDEX as IMAGE_TOKEN_INDEX

# llava_patch.vision_tower.RADIO_PREFIX, repeated so that install() does not import the RADIO model code
RADIO_PREFIX = "radio:"

_ORIGINALS: dict[str, object] = {}


def install() -> None:
    """Patch the imported original LLaVA package: RADIO towers, ragged image batches, transformers shims."""
    from llava_patch.compat import import_original_llava

    import_original_llava("llava.model")  # applies the shims, raises LLaVA's hidden import errors
    import llava.model.llava_arch as llava_arch
    import llava.model.multimodal_encoder.builder as builder

    original_build = _ORIGINALS.setdefault("build_vision_tower", builder.build_vision_tower)
    for module in list(sys.modules.values()):
        # __dict__, not getattr: lazy modules (transformers') import on attribute access
        if getattr(module, "__dict__", {}).get("build_vision_tower") is original_build:
            module.build_vision_tower = build_vision_tower

    meta = llava_arch.LlavaMetaForCausalLM
    _ORIGINALS.setdefault("prepare_inputs_labels_for_multimodal", meta.prepare_inputs_labels_for_multimodal)
    meta.prepare_inputs_labels_for_multimodal = prepare_inputs_labels_for_multimodal


def build_vision_tower(vision_tower_cfg, **kwargs):
    """LLaVA's `build_vision_tower` with `radio:...` names added (`delay_load` etc. pass through)."""
    name = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    if isinstance(name, str) and name.startswith(RADIO_PREFIX):
        from llava_patch.vision_tower import RadioVisionTower

        return RadioVisionTower(name, args=vision_tower_cfg, **kwargs)
    return _ORIGINALS["build_vision_tower"](vision_tower_cfg, **kwargs)


def _needs_original(self, images) -> bool:
    """True for the inputs only LLaVA's own code handles: 5-D anyres stacks and non-flat patch merging."""
    if getattr(self.config, "mm_patch_merge_type", "flat") != "flat":
        return True
    return torch.is_tensor(images) and images.ndim == 5


def encode_image_list(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Project a list of images of any sizes: item i is (3, H_i, W_i) or a stack (n_i, 3, H, W) of
    crops; returns one (tokens_i, D_llm) tensor per item (a stack's crops concatenated, LLaVA's "flat")."""
    crops, counts = [], []
    for item in images:
        item_crops = [item] if item.ndim == 3 else list(item)
        crops.extend(item_crops)
        counts.append(len(item_crops))
    features = self.get_model().get_vision_tower()(crops)  # list of (N_i, D) or (1, N_i, D)
    features = [f.reshape(-1, f.shape[-1]) for f in features]
    projected = self.get_model().mm_projector(torch.cat(features)).split([len(f) for f in features])
    per_item, start = [], 0
    for count in counts:
        per_item.append(torch.cat(projected[start : start + count]))
        start += count
    return per_item


def prepare_inputs_labels_for_multimodal(
    self, input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes=None
):
    """LLaVA's multimodal input preparation, accepting a list of differently sized images.

    input_ids (B, T) with -200 at each `<image>`; images a (B, 3, H, W) tensor or a list of (3, H_i, W_i)
    tensors, one per `<image>` and one dummy per text-only sample (LLaVA's rule). Returns LLaVA's tuple
    (None, position_ids, attention_mask, past_key_values, inputs_embeds (B, T', D), labels (B, T')).
    """
    if self.get_vision_tower() is None or images is None or input_ids.shape[1] == 1:
        return input_ids, position_ids, attention_mask, past_key_values, None, labels
    if _needs_original(self, images):
        return _ORIGINALS["prepare_inputs_labels_for_multimodal"](
            self, input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes
        )
    if isinstance(images, list):
        image_features = encode_image_list(self, images)
    else:
        image_features = self.encode_images(images)
    if getattr(self.config, "tune_mm_mlp_adapter", False) and getattr(
        self.config, "mm_use_im_start_end", False
    ):
        raise NotImplementedError(
            "LLaVA does not support mm_use_im_start_end while tuning only the projector"
        )

    given_labels, given_position_ids, given_mask = labels, position_ids, attention_mask
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if labels is None:
        labels = torch.full_like(input_ids, IGNORE_INDEX)

    embed_tokens = self.get_model().embed_tokens
    sequences, sequence_labels, image_index = [], [], 0
    for ids, row_labels, row_mask in zip(input_ids, labels, mask):
        ids, row_labels = ids[row_mask], row_labels[row_mask]
        image_positions = torch.where(ids == IMAGE_TOKEN_INDEX)[0].tolist()
        if not image_positions:
            # A text-only sample still consumes its dummy image: the empty slice keeps the tower and the
            # projector in the graph (DDP / ZeRO expect every parameter to take part).
            sequences.append(torch.cat([embed_tokens(ids), image_features[image_index][0:0]]))
            sequence_labels.append(row_labels)
            image_index += 1
            continue
        bounds = [-1, *image_positions, len(ids)]
        text_ids = [ids[a + 1 : b] for a, b in zip(bounds[:-1], bounds[1:])]
        text_labels = [row_labels[a + 1 : b] for a, b in zip(bounds[:-1], bounds[1:])]
        text_embeds = embed_tokens(torch.cat(text_ids)).split([len(t) for t in text_ids])
        pieces, piece_labels = [text_embeds[0]], [text_labels[0]]
        for embeds, span_labels in zip(text_embeds[1:], text_labels[1:]):
            features = image_features[image_index]
            image_index += 1
            pieces += [features, embeds]
            piece_labels += [
                torch.full((len(features),), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
            ]
            piece_labels += [span_labels]
        sequences.append(torch.cat([p.to(self.device) for p in pieces]))
        sequence_labels.append(torch.cat(piece_labels))

    max_length = getattr(self.config, "tokenizer_model_max_length", None)
    if max_length is not None:  # image tokens count towards the limit, as in LLaVA
        sequences = [s[:max_length] for s in sequences]
        sequence_labels = [s[:max_length] for s in sequence_labels]
    embeds, labels, mask, position_ids = _pad(self, sequences, sequence_labels, mask.dtype)
    return (
        None,
        None if given_position_ids is None else position_ids,
        None if given_mask is None else mask.to(given_mask.dtype),
        past_key_values,
        embeds,
        None if given_labels is None else labels,
    )


def _pad(self, sequences: list[torch.Tensor], sequence_labels: list[torch.Tensor], mask_dtype: torch.dtype):
    """Pad (T_i, D) sequences to (B, T, D) with zeros on `config.tokenizer_padding_side` (LLaVA saves
    "right" for training, eval sets "left"); labels pad with IGNORE_INDEX, position ids restart at 0."""
    batch, length = len(sequences), max(len(s) for s in sequences)
    reference = sequences[0]
    embeds = reference.new_zeros(batch, length, reference.shape[-1])
    labels = torch.full(
        (batch, length), IGNORE_INDEX, dtype=sequence_labels[0].dtype, device=reference.device
    )
    mask = torch.zeros(batch, length, dtype=mask_dtype, device=reference.device)
    position_ids = torch.zeros(batch, length, dtype=torch.long, device=reference.device)
    left = getattr(self.config, "tokenizer_padding_side", "right") == "left"
    for row, (sequence, row_labels) in enumerate(zip(sequences, sequence_labels)):
        n = len(sequence)
        if n == 0:
            continue
        span = slice(length - n, length) if left else slice(0, n)
        embeds[row, span] = sequence
        labels[row, span] = row_labels
        mask[row, span] = True
        position_ids[row, span] = torch.arange(n, device=reference.device)
    return embeds, labels, mask, position_ids
