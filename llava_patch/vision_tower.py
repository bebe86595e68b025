"""`RadioVisionTower`: RADIO behind the vision-tower contract of the original LLaVA codebase.

LLaVA (haotian-liu/LLaVA, `llava/model/multimodal_encoder/clip_encoder.py`) drives its tower through
`is_loaded`, `load_model(device_map)`, `image_processor` (`preprocess`, `image_mean` as the pad colour,
`crop_size` for text-only dummies), `hidden_size` (the projector's input width), `config`, `dtype`,
`device`, `select_layer` / `select_feature`, and `forward` on a (B, 3, H, W) tensor or a list of images.
This class keeps that contract; it holds a `RadioLlavaVisionModel` as `.vision_tower`, as LLaVA's CLIP
tower holds a `CLIPVisionModel`, so checkpoints of either tower have the same key layout.

Tower names (`--vision_tower` / `mm_vision_tower`): `radio:<source>[:key=value,...]`, where <source> is
a local folder (`RadioWithAdaptors` or `RadioLlavaVisionModel`, see `radio-vlm convert`) or a tiny twin
name (`radio_vlm.tiny.list_tiny_models()`), and the keys are

    long_edge=<px>        the image processor's long edge (default: the model's preferred resolution)
    resize_mode=<mode>    long_edge (default) | nearest_supported | square (RadioImageProcessor)
    feature=<sources>     "+"-joined feature sources: backbone | layer:<i> | adaptor:<name>
    adaptor=<name>        shorthand for feature=adaptor:<name> (the RADIO maintainers' tower option)
    layernorm=true        a LayerNorm on the output features
    merge=<merge>         token merge before the projector: none | unshuffle2 | pool2 (any s >= 2; also
                          written unshuffle:2), see radio_vlm/models/token_merge.py
    max_tokens=<N>        at most N image tokens per image (the processor lowers the long edge to fit)

e.g. `radio:/ckpt/radio-v2.5-b:long_edge=432`, `radio:tiny-radio:feature=backbone+adaptor:clip` or
`radio:/ckpt/radio-v2.5-h:long_edge=768,merge=unshuffle2` (LLaVA sizes its projector by `hidden_size`,
which a pixel-unshuffle multiplies by s^2).
Without `feature`/`adaptor`, LLaVA's `mm_vision_select_layer` chooses: -1 is the backbone's final
features (the AM-RADIO paper's LLaVA setting), any other i is `layer:<i>` (LLaVA-1.5's scripts pass -2).
The whole name is saved in LLaVA's config, so a checkpoint rebuilds the same tower.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig

from radio_vlm.models.configuration_radio_llava import RadioLlavaVisionConfig, parse_feature_source
from radio_vlm.models.image_processing_radio import RadioImageProcessor
from radio_vlm.models.modeling_radio_llava import RadioLlavaVisionModel
from radio_vlm.models.modeling_radio_with_adaptors import RadioWithAdaptors
from radio_vlm.models.token_merge import parse_token_merge
from radio_vlm.tiny import build_tiny_radio, list_tiny_models, tiny_radio_config

RADIO_PREFIX = "radio:"
_NAME = re.compile(r"^radio:(?P<source>.+?)(?::(?P<options>[a-z_]+=.*))?$")
_OPTIONS = ("long_edge", "resize_mode", "feature", "adaptor", "layernorm", "merge", "max_tokens")
_MERGE_SHORT = re.compile(r"^(?P<kind>[a-z]+)(?P<factor>\d+)$")  # the tower-name spelling "unshuffle2"


@dataclass
class RadioTowerSpec:
    """A parsed `radio:<source>[:key=value,...]` tower name (fields as in the module docstring)."""

    source: str
    long_edge: int | None = None
    resize_mode: str = "long_edge"
    feature_sources: list[str] = field(default_factory=list)  # empty: from mm_vision_select_layer
    layernorm: bool = False
    token_merge: str = "none"  # RadioLlavaVisionConfig.token_merge spelling ("unshuffle:2")
    max_image_tokens: int | None = None


def parse_radio_tower_name(name: str) -> RadioTowerSpec:
    """`radio:<source>[:key=value,...]` -> RadioTowerSpec; ValueError naming the bad part otherwise."""
    match = _NAME.match(name)
    if match is None:
        raise ValueError(
            f"vision tower {name!r} is not of the form radio:<path-or-tiny-name>[:key=value,...]"
        )
    spec = RadioTowerSpec(source=match["source"])
    for option in filter(None, (match["options"] or "").split(",")):
        key, sep, value = option.partition("=")
        if not sep or key not in _OPTIONS:
            raise ValueError(
                f"vision tower {name!r}: unknown option {option!r}; options are {', '.join(_OPTIONS)}"
            )
        if key == "long_edge":
            spec.long_edge = int(value)
        elif key == "resize_mode":
            spec.resize_mode = value
        elif key == "layernorm":
            spec.layernorm = value.lower() in ("1", "true", "yes")
        elif key == "merge":
            short = _MERGE_SHORT.match(value)
            spec.token_merge = f"{short['kind']}:{short['factor']}" if short else value
            try:
                parse_token_merge(spec.token_merge)
            except ValueError as err:
                raise ValueError(
                    f"vision tower {name!r}: merge={value!r}: {err} (or unshuffle2, pool2)"
                ) from None
        elif key == "max_tokens":
            try:  # the range is checked by the image processor, which knows the smallest image's cost
                spec.max_image_tokens = int(value)
            except ValueError:
                raise ValueError(f"vision tower {name!r}: max_tokens={value!r} is not an integer") from None
        else:
            sources = value.split("+") if key == "feature" else [f"adaptor:{value}"]
            if spec.feature_sources:
                raise ValueError(
                    f"vision tower {name!r}: give the features once (feature=... or adaptor=...)"
                )
            for source in sources:
                parse_feature_source(source)  # raises on a bad source
            spec.feature_sources = sources
    return spec


class RadioLlavaImageProcessor(RadioImageProcessor):
    """`RadioImageProcessor` with the attributes LLaVA's data code reads: `image_mean` (pad colour of
    `image_aspect_ratio="pad"`, the conditioner's mean, which the model normalises to 0), `crop_size` and
    `size` (the nominal square resolution; LLaVA sizes text-only dummy images by `crop_size`). A list of
    images is batched dense (padded to the largest), as LLaVA's `process_images` stacks them."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("pack", False)
        super().__init__(**kwargs)
        self.image_mean = list(self.pad_value)
        side = -(-self.long_edge // self.size_step) * self.size_step
        self.crop_size = {"height": side, "width": side}
        self.size = {"shortest_edge": side}


class RadioVisionTower(nn.Module):
    """RADIO as an original-LLaVA vision tower (see the module docstring for names and the contract)."""

    def __init__(self, vision_tower: str, args, delay_load: bool = False) -> None:
        super().__init__()
        self.is_loaded = False
        self.vision_tower_name = vision_tower
        self.spec = parse_radio_tower_name(vision_tower)
        self.select_layer = getattr(args, "mm_vision_select_layer", -1)
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        if self.select_feature != "patch":
            raise ValueError(
                f"mm_vision_select_feature={self.select_feature!r}: a RADIO tower gives patch tokens only "
                "(its CLS and register tokens are dropped); pass --mm_vision_select_feature patch"
            )
        source_config = self._source_config()
        # a RadioLlavaVisionModel folder loads as one (its weights, a trained output LayerNorm included)
        self._source_is_vision_model = isinstance(source_config, RadioLlavaVisionConfig)
        self.cfg_only = self._vision_config(source_config)
        try:
            self.image_processor = RadioLlavaImageProcessor.from_model_config(
                self.cfg_only.radio_config,
                resize_mode=self.spec.resize_mode,
                token_merge=self.cfg_only.token_merge,
                max_image_tokens=self.spec.max_image_tokens,
                **self._long_edge(),
            )
        except ValueError as err:
            raise ValueError(f"vision tower {vision_tower!r}: {err}") from None
        if not delay_load or getattr(args, "unfreeze_mm_vision_tower", False):
            self.load_model()

    def _long_edge(self) -> dict:
        return {} if self.spec.long_edge is None else {"long_edge": self.spec.long_edge}

    def _feature_sources(self) -> list[str]:
        if self.spec.feature_sources:
            return self.spec.feature_sources
        return ["backbone"] if self.select_layer in (-1, None) else [f"layer:{int(self.select_layer)}"]

    def _source_config(self):
        """The source's config without weights: a tiny twin's, or a local folder's config.json."""
        source = self.spec.source
        if source in list_tiny_models():
            return tiny_radio_config(source)
        if not Path(source, "config.json").is_file():
            raise FileNotFoundError(
                f"vision tower {self.vision_tower_name!r}: {source!r} is neither a folder with a config.json "
                f"nor a tiny RADIO ({', '.join(list_tiny_models())}); convert an official checkpoint with "
                "`radio-vlm convert` and pass its folder"
            )
        return AutoConfig.from_pretrained(source)

    def _vision_config(self, config) -> RadioLlavaVisionConfig:
        """The tower's vision-model config from the source's (a RADIO or a RadioLlavaVisionModel config)."""
        radio_config = config.radio_config if isinstance(config, RadioLlavaVisionConfig) else config
        try:
            return RadioLlavaVisionConfig(
                radio_config=radio_config.to_dict(),
                feature_sources=self._feature_sources(),
                output_layernorm=self.spec.layernorm or getattr(config, "output_layernorm", False),
                token_merge=self.spec.token_merge,
            )
        except ValueError as err:
            raise ValueError(f"vision tower {self.vision_tower_name!r}: {err}") from None

    def load_model(self, device_map=None) -> None:
        """Build the RADIO model with its weights (idempotent); frozen, like LLaVA's CLIP tower."""
        if self.is_loaded:
            return
        source, config = self.spec.source, self.cfg_only
        settings = {
            "feature_sources": config.feature_sources,
            "output_layernorm": config.output_layernorm,
            "token_merge": config.token_merge,
        }
        if source in list_tiny_models():
            self.vision_tower = RadioLlavaVisionModel.from_radio(build_tiny_radio(source), **settings)
        elif self._source_is_vision_model:
            self.vision_tower = RadioLlavaVisionModel.from_pretrained(source, config=config)
        else:
            self.vision_tower = RadioLlavaVisionModel.from_radio(
                RadioWithAdaptors.from_pretrained(source), **settings
            )
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> (B, T, hidden_size); a list of (3, H_i, W_i) (or (1, 3, H_i, W_i))
        -> a list of (T_i, hidden_size), run as one packed batch; T = `config.num_image_tokens(H, W)`
        (H*W/p^2, or fewer with a token merge). Sides must be multiples of the patch size p
        (RadioLlavaImageProcessor guarantees it). Outputs take the input dtype."""
        trainable = any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            if torch.is_tensor(images):
                self._check_sizes([images.shape[-2:]])
                out = self.vision_tower(images.to(device=self.device, dtype=self.dtype))
                return out.last_hidden_state.to(images.dtype)
            images = [image.reshape(image.shape[-3:]) for image in images]
            sizes = [tuple(image.shape[-2:]) for image in images]
            self._check_sizes(sizes)
            batch = images[0].new_zeros(len(images), 3, max(h for h, _ in sizes), max(w for _, w in sizes))
            for row, image in zip(batch, images):
                row[:, : image.shape[1], : image.shape[2]] = image
            out = self.vision_tower(batch.to(device=self.device, dtype=self.dtype), image_sizes=sizes)
            counts = [self.config.num_image_tokens(h, w) for h, w in sizes]
            return list(out.last_hidden_state[0].to(images[0].dtype).split(counts))

    def _check_sizes(self, sizes) -> None:
        for index, (height, width) in enumerate(sizes):
            if height % self.patch_size or width % self.patch_size:
                raise ValueError(
                    f"image {index} is {int(width)}x{int(height)} px (w x h); a RADIO tower needs sides that are "
                    f"multiples of {self.patch_size}: preprocess with the tower's image_processor"
                )

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.device

    @property
    def config(self) -> RadioLlavaVisionConfig:
        return self.vision_tower.config if self.is_loaded else self.cfg_only

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        """Image tokens along a side of the nominal square image (`image_processor.crop_size`)."""
        return self.image_processor.crop_size["height"] // (self.patch_size * self.config.merge_factor)

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2
