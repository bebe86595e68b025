"""`RadioLlavaVisionModel`: RADIO as the vision tower that transformers' `LlavaForConditionalGeneration` hosts.

LLaVA calls its tower as `vision_tower(pixel_values, return_dict=True, output_hidden_states=<layer>,
image_sizes=...)`, takes `hidden_states[vision_feature_layer]`, projects it, and splits the packed result
per image by `prod(image_sizes // vision_tower.patch_size)` (the Pixtral convention). This model returns
only patch tokens (no CLS/register tokens) and answers every layer request with its configured feature
sources, so the LLaVA config uses `vision_feature_layer=-1` and `vision_feature_select_strategy="full"`;
which layer or adaptor the LLM sees is this model's `feature_sources`.

With a token merge (`token_merge="unshuffle:s"` or `"pool:s"`) one output token covers s x s patches, so
`patch_size` (what LLaVA divides by) is p * s; `RadioLlavaProcessor` pads every image to multiples of it
(`RadioImageProcessor(token_merge=...)`), which keeps LLaVA's split exact. Other callers may pass any
multiple of p: the grid is then padded with zero tokens (see `token_merge.py`).

Exported next to the weights for `trust_remote_code`: imports only torch, transformers and sibling files.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, LlavaForConditionalGeneration, PreTrainedModel
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .configuration_radio_llava import RadioLlavaConfig, RadioLlavaVisionConfig, parse_feature_source
from .image_processing_radio import patchify
from .modeling_radio_with_adaptors import RadioWithAdaptors
from .token_merge import merge_packed_tokens, merge_tokens


class RadioLlavaVisionModel(PreTrainedModel):
    """Patch features of RADIO for LLaVA.

    forward(pixel_values, image_sizes=None):
        pixel_values: (N, 3, H, W) RGB in [0, 1]; images padded bottom/right to a common size.
        image_sizes: (N, 2) each image's (height, width) in px inside its padded tensor, multiples of RADIO's
            patch size p. Given, the images are cropped to their sizes and run packed: last_hidden_state is
            (1, sum_i T_i, hidden_size). Absent, all images are (H, W): (N, T, hidden_size).
    T = `config.num_image_tokens(height, width)`: (H/p) * (W/p) patch tokens, or with a token merge
    ceil(H/(p*s)) * ceil(W/(p*s)) merged tokens. `hidden_states` is `(last_hidden_state,)`: any
    `vision_feature_layer` LLaVA asks for (-1 or 0) gets it.
    """

    config_class = RadioLlavaVisionConfig
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = False
    _no_split_modules = ["RadioLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True

    def __init__(self, config: RadioLlavaVisionConfig):
        super().__init__(config)
        self.radio = RadioWithAdaptors(config.radio_config)
        # on the patch tokens, before the merge: padding tokens stay zero, and the weights do not depend on it
        self.layernorm = nn.LayerNorm(config.feature_width) if config.output_layernorm else None
        self.sources = [parse_feature_source(s) for s in config.feature_sources]
        self.post_init()
        self.requires_grad_(config.trainable)
        self.train()  # eval mode from construction on (see `train`)

    @classmethod
    def from_radio(cls, radio: RadioWithAdaptors, **config_kwargs) -> RadioLlavaVisionModel:
        """Wrap a loaded `RadioWithAdaptors`; `config_kwargs` are `RadioLlavaVisionConfig` fields
        (feature_sources, output_layernorm, trainable, token_merge). `radio` is adopted, not copied: no second copy in
        memory, and parameters that DeepSpeed ZeRO-3 partitioned while they loaded stay partitioned."""
        config = RadioLlavaVisionConfig(radio_config=radio.config.to_dict(), **config_kwargs)
        with torch.device("meta"):  # placeholders only: `radio` replaces the RADIO built here
            model = cls(config)
        model.radio = radio
        if config.output_layernorm:
            weight = next(radio.parameters())
            model.layernorm = nn.LayerNorm(config.feature_width, device=weight.device, dtype=weight.dtype)
        model.requires_grad_(config.trainable)
        return model.train()

    def _init_weights(self, module: nn.Module) -> None:
        if module is self.layernorm:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        else:
            self.radio._init_weights(module)

    def train(self, mode: bool = True) -> RadioLlavaVisionModel:
        # Always eval mode: RADIO's train mode is the distillation-time CPE augmentation (random crops and
        # dropout of the position table), which LLaVA training does not use; a trainable tower still gets
        # gradients.
        return super().train(False)

    def get_input_embeddings(self) -> nn.Module:
        return self.radio.backbone.embeddings

    @property
    def patch_size(self) -> int:
        """Pixels per side of one output token: RADIO's patch size times the merge factor s (LLaVA's split
        reads it)."""
        return self.config.patch_size * self.config.merge_factor

    def forward(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        p = self.config.patch_size
        grid_hw = None
        if image_sizes is not None:
            sizes = torch.as_tensor(image_sizes).tolist()
            if any(h % p or w % p for h, w in sizes):
                raise ValueError(
                    f"image_sizes {sizes} must be multiples of the patch size {p}: pass the padded sizes "
                    "RadioLlavaProcessor returns"
                )
            pixel_values = torch.cat([patchify(im[:, :h, :w], p) for im, (h, w) in zip(pixel_values, sizes)])
            grid_hw = torch.tensor(sizes, device=pixel_values.device) // p
        features = self._features(pixel_values, grid_hw)
        if self.layernorm is not None:
            features = self.layernorm(features)
        if grid_hw is not None:  # packed: (1, sum T_i, D)
            features = merge_packed_tokens(features, grid_hw.tolist(), self.config.token_merge)[None]
        else:
            grid = (pixel_values.shape[-2] // p, pixel_values.shape[-1] // p)
            features = merge_tokens(features, grid, self.config.token_merge)
        return BaseModelOutputWithPooling(last_hidden_state=features, hidden_states=(features,))

    def _features(self, pixel_values: torch.Tensor, grid_hw: torch.Tensor | None) -> torch.Tensor:
        """Concatenated feature sources: (sum h*w, D) packed, or (N, h*w, D)."""
        layer_sources = [arg for kind, arg in self.sources if kind == "layer"]  # ViT backbones only
        depth = len(self.radio.backbone.encoder.layer) if layer_sources else 1
        layers = sorted({arg % depth for arg in layer_sources})
        heads = [arg for kind, arg in self.sources if kind == "adaptor"]  # only these heads run
        if layers:
            only_layers = all(kind == "layer" for kind, _ in self.sources)
            result = self.radio.forward_intermediates(
                pixel_values,
                indices=layers,
                output_fmt="NLC",
                intermediates_only=only_layers,
                image_grid_hw=grid_hw,
                adaptors=heads,
            )
            out, intermediates = (None, result) if only_layers else result
            by_layer = dict(zip(layers, intermediates))
        else:
            out = self.radio(pixel_values, feature_fmt="NLC", image_grid_hw=grid_hw, adaptors=heads)
            by_layer = {}
        parts = []
        for kind, arg in self.sources:
            if kind == "backbone":
                parts.append(out.features)
            elif kind == "layer":
                parts.append(by_layer[arg % depth])
            else:
                parts.append(out.adaptors[arg].features.to(out.features.dtype))
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


class RadioLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """transformers' `LlavaForConditionalGeneration` for a folder loaded with `trust_remote_code=True`
    (`radio-llava export --remote-code`); the same modules and weights, nothing overridden but the config
    class. With `radio_vlm` installed a run loads as the stock class."""

    config_class = RadioLlavaConfig

    def __init__(self, config: RadioLlavaConfig):
        # What transformers knows of the stock class but not of remote code: LlavaModel builds its tower with
        # AutoModel.from_config(config.vision_config) (radio_vlm's import registers it; remote code has no
        # radio_vlm), and a LLaVA checkpoint's keys (`language_model.lm_head.weight`, ...) are renamed on
        # load and save by the "llava" conversion mapping, which custom classes only get when registered.
        AutoModel.register(type(config.vision_config), RadioLlavaVisionModel, exist_ok=True)
        register_checkpoint_conversion_mapping(
            type(self).__name__, get_checkpoint_conversion_mapping(config.model_type), overwrite=True
        )
        super().__init__(config)
