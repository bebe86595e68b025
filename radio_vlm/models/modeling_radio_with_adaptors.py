"""`RadioWithAdaptors`: transformers' `RadioModel` backbone plus what the official RADIO adds around it.

Adds per-teacher adaptor heads, feature normalizers, `forward_intermediates`, ViTDet windowed attention,
training-time CPE (random crops of the position table, shared per clip in `cpe_video_mode`), the
pre-2025-06-28 `align_corners=True` position interpolation, the official resolution rules, and the official
students' variants of the ViT (patch-embedder bias, MLP norm, scaled LayerNorm, final norm: `vit_variants`).
The backbone's modules and weight names are kept; this file only runs its encoder layers itself (to window
them and to read intermediate layers).

Exported next to the weights for `trust_remote_code`: imports only torch, transformers and sibling files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, RadioModel
from transformers import initialization as init
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.modeling_outputs import ModelOutput

from .adaptors import FeatureNormalizer, IntermediateFeatureNormalizer, RadioAdaptorHead
from .configuration_radio_with_adaptors import RadioWithAdaptorsConfig
from .cpe import RadioCPEPatchEmbeddings
from .vit_variants import apply_student_variants
from .windowing import packed_window_order, vitdet_schedule

try:  # the E-RADIO backbone lives in its own files; absent files only disable that backbone type
    from .modeling_eradio import ERadioModel
except ImportError:
    ERadioModel = None

# backbone `model_type` -> model class (the config class is chosen by the same key in the config file)
BACKBONE_MODEL_CLASSES: dict[str, type | None] = {"radio": RadioModel, "eradio": ERadioModel}


class Resolution(NamedTuple):
    height: int
    width: int


@dataclass
class RadioOutput(ModelOutput):
    """One head's outputs (the official `RadioOutput`).

    summary: (B, C) float32 for adaptors, or None when the adaptor has no summary head.
    features: (B, T, C) NLC or (B, C, h, w) NCHW; for packed input (sum of T_i, C).
    """

    summary: torch.Tensor | None = None
    features: torch.Tensor | None = None


@dataclass
class RadioWithAdaptorsOutput(ModelOutput):
    """Output of [`RadioWithAdaptors`].

    summary: (B, len(summary_idxs) * D), the flattened CLS tokens at `summary_idxs`.
    features: (B, h*w, D) NLC or (B, D, h, w) NCHW, the patch tokens after the feature normalizer.
        Packed input (`image_grid_hw`): summary (num_images, ...), features (sum_i h_i*w_i, D) NLC,
        adaptor features (sum_i h_i*u * w_i*u, C) with u the head's upsample factor.
    adaptors: {name: RadioOutput} per teacher head computed (all by default; see `forward(adaptors=...)`), float32.
    last_hidden_state: (B, S + h*w, D) all tokens after the last block and the final norm, if the model has
        one (packed: (1, total, D)).
    hidden_states: with `output_hidden_states=True`, the embeddings and every block's output (before the
        final norm).
    """

    summary: torch.Tensor | None = None
    features: torch.Tensor | None = None
    adaptors: dict[str, RadioOutput] | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class RadioWithAdaptors(PreTrainedModel):
    """RADIO backbone (transformers `RadioModel`, or E-RADIO) with per-teacher adaptor heads.

    Inputs are RGB in [0, 1]: the backbone's input conditioner applies the CLIP mean/std.
    A non-ViT backbone (E-RADIO) must return an object with `summary` (B, C) and `features` (B, T, D)
    from `backbone(pixel_values)`; ViTDet, intermediates and packed input need the ViT backbone.
    """

    config_class = RadioWithAdaptorsConfig
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["RadioLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True

    def __init__(self, config: RadioWithAdaptorsConfig):
        super().__init__(config)
        backbone_class = BACKBONE_MODEL_CLASSES.get(config.backbone_config.model_type)
        if backbone_class is None:
            raise ValueError(f"no backbone model for model_type {config.backbone_config.model_type!r}")
        self.backbone = backbone_class(config.backbone_config)
        if self.is_vit:
            self.backbone.embeddings = RadioCPEPatchEmbeddings(config.backbone_config, config)
            apply_student_variants(self.backbone, config)
        self.final_norm = (
            nn.LayerNorm(config.embed_dim, eps=config.backbone_config.layer_norm_eps)
            if config.final_norm
            else None
        )
        attn_implementation = getattr(config.backbone_config, "_attn_implementation", None) or "sdpa"
        self.adaptors = nn.ModuleDict(
            {
                name: RadioAdaptorHead(config.embed_dim, spec, attn_implementation)
                for name, spec in config.adaptors.items()
            }
        )
        self.feature_normalizer = FeatureNormalizer(config.embed_dim) if config.feature_normalizer else None
        inter = config.intermediate_feature_normalizer
        self.inter_feature_normalizer = (
            IntermediateFeatureNormalizer(
                inter["num_intermediates"], config.embed_dim, inter.get("rot_per_layer", False)
            )
            if inter is not None
            else None
        )
        self._vitdet_windowed: list[bool] | None = None
        if config.vitdet_window_size is not None:
            self.set_vitdet(config.vitdet_window_size, config.vitdet_num_global, config.vitdet_num_windowed)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, FeatureNormalizer):
            init.zeros_(module.mean)
            init.copy_(module.tx, torch.eye(module.tx.shape[0]))
        elif isinstance(module, IntermediateFeatureNormalizer):
            init.ones_(module.alphas)
            init.zeros_(module.means)
            init.copy_(module.rotation, torch.eye(module.rotation.shape[-1]).expand_as(module.rotation))
        else:
            super()._init_weights(module)

    # ----- properties mirroring the official RADIOModel -----
    @property
    def is_vit(self) -> bool:
        return isinstance(self.backbone, RadioModel)

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def window_size(self) -> int | None:
        return self.config.vitdet_window_size

    @property
    def min_resolution_step(self) -> int:
        """H and W must be multiples of this: patch_size * (ViTDet window or 1), or the backbone's own step."""
        step = getattr(self.config.backbone_config, "min_resolution_step", self.patch_size)
        return step * (self.window_size or 1)

    @property
    def max_resolution(self) -> int | None:
        return self.config.max_resolution

    @property
    def preferred_resolution(self) -> Resolution | None:
        res = self.config.preferred_resolution
        return Resolution(*res) if res is not None else None

    @property
    def num_summary_tokens(self) -> int:
        """CLS + register tokens before the patch tokens (0 for E-RADIO)."""
        return self.config.backbone_config.num_summary_tokens if self.is_vit else 0

    @property
    def num_cls_tokens(self) -> int:
        """CLS slots that heads may read: the backbone's, or more if an adaptor's `head_idx` is larger."""
        heads = [spec["head_idx"] + 1 for spec in self.config.adaptors.values()]
        return max([self.config.backbone_config.num_cls_tokens if self.is_vit else 1, *heads])

    @property
    def summary_dim(self) -> int:
        return self.embed_dim * len(self.backbone.summary_idxs) if self.is_vit else self.embed_dim

    def get_nearest_supported_resolution(self, height: int, width: int) -> Resolution:
        """Each side rounded to the nearest multiple of `min_resolution_step` (Python round: ties to even),
        at least one step; e.g. 437x641 -> 432x640 with step 16."""
        step = self.min_resolution_step
        return Resolution(*(max(step, int(round(side / step) * step)) for side in (height, width)))

    def make_preprocessor_external(self) -> nn.Module:
        """Detach the input conditioner ((x - mean) / std) and return it; the model then expects normalised input."""
        return self.backbone.make_preprocessor_external()

    def set_vitdet(
        self, window_size: int | None, num_global: int | None = None, num_windowed: int | None = None
    ):
        """Enable ViTDet windowed attention with windows of `window_size` x `window_size` patches (None disables).

        Schedule as the official `apply_vitdet_arch`: see `windowing.vitdet_schedule`. Given neither
        `num_global` nor `num_windowed`, the config's schedule is used (a converted release's official one,
        e.g. 8 global blocks for RADIOv2.5-g; else the official default of 4). Input sides must then be
        multiples of `patch_size * window_size`.
        """
        if window_size is None:
            self._vitdet_windowed = None
            self.config.vitdet_window_size = None
            return
        if not self.is_vit:
            raise ValueError("ViTDet windowed attention needs a ViT backbone; E-RADIO has its own windows")
        if not self.config.vitdet_supported:
            raise ValueError(
                f"{self.config.version or 'this model'} was trained without ViTDet (config.vitdet_supported is "
                "False), so the official loader refuses windowed attention for it; set "
                "config.vitdet_supported = True to try it anyway"
            )
        if not isinstance(window_size, int) or window_size < 1:
            raise ValueError(f"vitdet window_size must be a positive int (patches), got {window_size!r}")
        if num_global is None and num_windowed is None:
            num_global, num_windowed = self.config.vitdet_num_global, self.config.vitdet_num_windowed
        depth = self.config.backbone_config.num_hidden_layers
        self._vitdet_windowed = vitdet_schedule(depth, num_global, num_windowed)
        self.config.vitdet_window_size = window_size
        self.config.vitdet_num_global, self.config.vitdet_num_windowed = num_global, num_windowed

    @contextlib.contextmanager
    def cpe_video_mode(self, t: int) -> Iterator[None]:
        """Context manager (official `cpe_video_mode`): inputs are batches of clips of `t` consecutive frames,
        (B*t, 3, H, W), and in training each clip's frames share one random crop of the position table.
        Inference is unchanged (the eval-time position embedding has no randomness)."""
        if not self.is_vit:
            raise ValueError("cpe_video_mode needs a ViT backbone with a CPE patch generator")
        if not isinstance(t, int) or t < 1:
            raise ValueError(f"cpe_video_mode needs t >= 1 frames per clip, got {t!r}")
        embeddings = self.backbone.embeddings
        previous, embeddings.num_video_frames = embeddings.num_video_frames, t
        try:
            yield
        finally:
            embeddings.num_video_frames = previous

    def save_pretrained(self, save_directory: str | os.PathLike, *args, export_code: bool = False, **kwargs):
        """`PreTrainedModel.save_pretrained`; with `export_code=True` also write this model's code files and an
        `auto_map`, so `AutoModel.from_pretrained(dir, trust_remote_code=True)` works without `radio_vlm`."""
        if not export_code:
            return super().save_pretrained(save_directory, *args, **kwargs)
        previous = getattr(self.config, "auto_map", None)
        self.config.auto_map = {
            "AutoConfig": f"{Path(__file__).stem.replace('modeling_', 'configuration_')}.RadioWithAdaptorsConfig",
            "AutoModel": f"{Path(__file__).stem}.RadioWithAdaptors",
        }
        try:
            result = super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.config.auto_map = previous
        for source in [__file__, *get_relative_import_files(__file__)]:
            shutil.copyfile(source, Path(save_directory) / Path(source).name)
        return result

    # ----- the ViT encoder, run block by block -----
    def _check_resolution(self, pixel_values: torch.Tensor, image_grid_hw: torch.Tensor | None) -> None:
        if image_grid_hw is None:
            height, width = pixel_values.shape[-2:]
            if height % self.min_resolution_step or width % self.min_resolution_step:
                # the official message (radio_model.py), recorded in fixtures/radio_reference/resolution_rules.json
                raise ValueError(
                    "The input resolution must be a multiple of "
                    f"`self.min_resolution_step={self.min_resolution_step}`. "
                    "`self.get_nearest_supported_resolution(<height>, <width>) is provided as a convenience API. "
                    f"Input: {pixel_values.shape[-2:]}, "
                    f"Nearest: {self.get_nearest_supported_resolution(height, width)}"
                )
        elif self.window_size is not None:
            for i, (h, w) in enumerate(image_grid_hw.tolist()):
                if h % self.window_size or w % self.window_size:
                    raise ValueError(
                        f"image {i} of the packed batch has a {h}x{w} patch grid; with ViTDet window "
                        f"{self.window_size} both sides must be multiples of it (pixels: multiples of "
                        f"{self.min_resolution_step}); see get_nearest_supported_resolution"
                    )

    def _embed(self, pixel_values: torch.Tensor, image_grid_hw: torch.Tensor | None):
        """Token sequence before the first block and the patch grid of each image.

        Returns (hidden (B, S + h*w, D) or packed (1, total, D), grids [(h, w)] per image).
        """
        self._check_resolution(pixel_values, image_grid_hw)
        backbone, p = self.backbone, self.patch_size
        if image_grid_hw is None:
            hidden = backbone.embeddings(backbone.input_conditioner(pixel_values))
            grids = [(pixel_values.shape[-2] // p, pixel_values.shape[-1] // p)] * pixel_values.shape[0]
            return hidden, grids
        channels = self.config.backbone_config.num_channels
        pixels = backbone.input_conditioner(pixel_values.reshape(-1, channels, p, p))
        hidden = backbone.embeddings(pixels.flatten(1), image_grid_hw)
        return hidden, [tuple(g) for g in image_grid_hw.tolist()]

    def _run_blocks(self, hidden: torch.Tensor, grids: list, packed: bool, keep: set[int], last: int):
        """Run blocks 0..last; return {i: output of block i (row-major order)} for i in `keep` plus `last`."""
        num_prefix = self.num_summary_tokens
        kwargs = {}
        if packed and len(grids) > 1:
            lengths = torch.tensor([h * w + num_prefix for h, w in grids], device=hidden.device)
            kwargs["cu_seqlens"] = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        windowed = self._vitdet_windowed
        inverse = None
        if windowed is not None:
            image_grids = grids if packed else grids[:1]
            order, patch_positions = packed_window_order(
                image_grids, num_prefix, self.window_size, hidden.device
            )
            inverse = torch.argsort(order)
            hidden = hidden[:, order]
            window_tokens = self.window_size**2
        outputs = {}
        for i, layer in enumerate(self.backbone.encoder.layer[: last + 1]):
            if windowed is not None and windowed[i]:
                patches = hidden[:, patch_positions]
                patches = layer(patches.reshape(-1, window_tokens, patches.shape[-1])).reshape(patches.shape)
                hidden = hidden.index_copy(1, patch_positions, patches)
            else:
                hidden = layer(hidden, **kwargs)
            if i in keep or i == last:
                outputs[i] = hidden if inverse is None else hidden[:, inverse]
        return outputs

    def _split_tokens(self, tokens: torch.Tensor, grids: list, packed: bool):
        """(cls (N, num_cls, D), patches (N, h*w, D) or packed (sum h*w, D)) from a block's output."""
        num_prefix, num_cls = self.num_summary_tokens, self.num_cls_tokens
        if not packed:
            return tokens[:, :num_cls], tokens[:, num_prefix:]
        lengths = [h * w + num_prefix for h, w in grids]
        per_image = tokens[0].split(lengths)
        return torch.stack([t[:num_cls] for t in per_image]), torch.cat([t[num_prefix:] for t in per_image])

    def _format(self, features: torch.Tensor, grid: tuple[int, int], feature_fmt: str) -> torch.Tensor:
        if feature_fmt == "NLC":
            return features
        return features.reshape(features.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2)

    def _head_names(self, adaptors: Sequence[str] | None) -> list[str]:
        """The adaptor heads a forward computes: all for None, else the given names (checked)."""
        if adaptors is None:
            return list(self.adaptors)
        if isinstance(adaptors, str):
            raise ValueError(
                f"adaptors must be a list of head names, got the string {adaptors!r}: pass [{adaptors!r}]"
            )
        unknown = [name for name in adaptors if name not in self.adaptors]
        if unknown:
            raise ValueError(
                f"adaptors {unknown} are not heads of this model; its heads are {list(self.adaptors)} "
                "(None computes all of them, [] none)"
            )
        return list(dict.fromkeys(adaptors))

    def _head_outputs(
        self, cls_tokens, features, grids, packed: bool, feature_fmt: str, names: list[str]
    ) -> dict[str, RadioOutput]:
        outputs = {}
        for name in names:
            head = self.adaptors[name]
            if packed:
                chunks = features.split([h * w for h, w in grids])
                parts = [head.forward_features(c[None], g) for c, g in zip(chunks, grids)]
                feats = None if parts[0] is None else torch.cat([p[0] for p in parts])
            else:
                feats = head.forward_features(features, grids[0])
                if feats is not None:
                    u = head.upsample_factor
                    feats = self._format(feats, (grids[0][0] * u, grids[0][1] * u), feature_fmt)
            outputs[name] = RadioOutput(summary=head.forward_summary(cls_tokens), features=feats)
        return outputs

    def _packed_grids(
        self, pixel_values: torch.Tensor, image_grid_hw: torch.Tensor | None
    ) -> torch.Tensor | None:
        """`image_grid_hw` when `pixel_values` are packed patches, None for a dense (B, 3, H, W) batch."""
        if image_grid_hw is None or pixel_values.ndim == 4:
            return None
        patch_dim = self.config.backbone_config.num_channels * self.patch_size**2
        total = int(image_grid_hw.prod(-1).sum())
        if pixel_values.ndim != 2 or tuple(pixel_values.shape) != (total, patch_dim):
            raise ValueError(
                f"packed pixel_values must be (sum of h*w over image_grid_hw, 3*patch_size**2) = "
                f"({total}, {patch_dim}), got {tuple(pixel_values.shape)}"
            )
        return image_grid_hw

    def _check_fmt(self, feature_fmt: str, packed: bool) -> None:
        if feature_fmt not in ("NLC", "NCHW"):
            raise ValueError(f"feature_fmt must be 'NLC' or 'NCHW', got {feature_fmt!r}")
        if packed and feature_fmt != "NLC":
            raise ValueError(
                "packed input (image_grid_hw) gives NLC features only: split them by image_grid_hw"
            )

    def forward(
        self,
        pixel_values: torch.Tensor,
        feature_fmt: str = "NLC",
        image_grid_hw: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        adaptors: Sequence[str] | None = None,
        **kwargs,
    ) -> RadioWithAdaptorsOutput:
        """Summary, features and the adaptors' outputs.

        pixel_values: (B, 3, H, W) RGB in [0, 1], H and W multiples of `min_resolution_step`; or, with
            `image_grid_hw` (num_images, 2) patch grids, the concatenated flattened patches
            (sum_i h_i*w_i, 3*p*p) of differently sized images (channel-major patches, as RadioModel packs).
            With 4-D `pixel_values` a given `image_grid_hw` is not needed and is ignored, as are other
            processor outputs in `kwargs` (`image_sizes`), so `model(**processor(images))` works either way.
        adaptors: the heads to compute, by name: None (default) every head, a list those (`output.adaptors`
            holds only them), [] none. Heads nobody reads cost time (a SAM head upsamples), so a caller that
            needs the backbone's features only passes [].
        """
        names = self._head_names(adaptors)
        image_grid_hw = self._packed_grids(pixel_values, image_grid_hw)
        packed = image_grid_hw is not None
        self._check_fmt(feature_fmt, packed)
        if not self.is_vit:
            if output_hidden_states:
                raise ValueError("hidden states need a ViT backbone (model_type 'radio')")
            if packed:
                return self._forward_other_backbone_packed(pixel_values, image_grid_hw, names)
            return self._forward_other_backbone(pixel_values, feature_fmt, names)
        hidden, grids = self._embed(pixel_values, image_grid_hw)
        depth = len(self.backbone.encoder.layer)
        keep = set(range(depth)) if output_hidden_states else set()
        outputs = self._run_blocks(hidden, grids, packed, keep, depth - 1)
        hidden_states = (hidden, *(outputs[i] for i in range(depth))) if output_hidden_states else None
        return self._final_outputs(outputs[depth - 1], grids, packed, feature_fmt, names, hidden_states)

    def _final_outputs(
        self,
        last: torch.Tensor,
        grids: list,
        packed: bool,
        feature_fmt: str,
        names: list[str],
        hidden_states=None,
    ):
        if self.final_norm is not None:
            last = self.final_norm(last)
        cls_tokens, patches = self._split_tokens(last, grids, packed)
        summary = cls_tokens[:, self.backbone.summary_idxs].flatten(1)
        features = self.feature_normalizer(patches) if self.feature_normalizer is not None else patches
        return RadioWithAdaptorsOutput(
            summary=summary,
            features=features if packed else self._format(features, grids[0], feature_fmt),
            adaptors=self._head_outputs(cls_tokens, features, grids, packed, feature_fmt, names),
            last_hidden_state=last,
            hidden_states=hidden_states,
        )

    def _forward_other_backbone(
        self, pixel_values: torch.Tensor, feature_fmt: str, names: list[str]
    ) -> RadioWithAdaptorsOutput:
        out = self.backbone(pixel_values)
        features = out.features
        if self.feature_normalizer is not None:
            features = self.feature_normalizer(features)
        grid = (pixel_values.shape[-2] // self.patch_size, pixel_values.shape[-1] // self.patch_size)
        cls_tokens = out.summary[:, None]  # no CLS token: the summary (mean of features) feeds every head
        return RadioWithAdaptorsOutput(
            summary=out.summary,
            features=self._format(features, grid, feature_fmt),
            adaptors=self._head_outputs(cls_tokens, features, [grid], False, feature_fmt, names),
        )

    def _forward_other_backbone_packed(
        self, patches: torch.Tensor, image_grid_hw: torch.Tensor, names: list[str]
    ) -> RadioWithAdaptorsOutput:
        """Packed input for a convolutional backbone (E-RADIO): each image is rebuilt from its patches
        (channel-major, row-major as `patchify`) and run alone; the outputs are packed as the ViT's."""
        p, grids = self.patch_size, [tuple(g) for g in image_grid_hw.tolist()]
        outs = []
        for (h, w), chunk in zip(grids, patches.split([h * w for h, w in grids])):
            image = chunk.reshape(h, w, -1, p, p).permute(2, 0, 3, 1, 4).reshape(1, -1, h * p, w * p)
            outs.append(self._forward_other_backbone(image, "NLC", names))

        def pack(parts: list[torch.Tensor | None], tokens: bool) -> torch.Tensor | None:
            return None if parts[0] is None else torch.cat([x[0] if tokens else x for x in parts])

        return RadioWithAdaptorsOutput(
            summary=pack([o.summary for o in outs], False),
            features=pack([o.features for o in outs], True),
            adaptors={
                name: RadioOutput(
                    summary=pack([o.adaptors[name].summary for o in outs], False),
                    features=pack([o.adaptors[name].features for o in outs], True),
                )
                for name in names
            },
        )

    def forward_intermediates(
        self,
        pixel_values: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        aggregation: str = "sparse",
        norm_alpha_scheme: str = "post-alpha",
        image_grid_hw: torch.Tensor | None = None,
        adaptors: Sequence[str] | None = None,
    ):
        """Block outputs at `indices`, as the official `RADIOModel.forward_intermediates`.

        indices: an int n takes the last n blocks; a list takes those blocks (negative counts from the end);
            None takes every block.
        norm: apply the model's final norm to every intermediate (after the intermediate normalizer), as the
            official `norm=True`; a no-op for models without one (most releases: `model_norm=False`).
        aggregation: "sparse" takes each chosen block's output; "dense" averages all blocks of the group that
            ends at each chosen index ("Dense Connector", Yao et al. 2024).
        norm_alpha_scheme: with an intermediate feature normalizer, "post-alpha" scales the group mean by the
            mean alpha, "pre-alpha" averages alpha-scaled layers, "none" skips the normalizer.
        Returns a list with one entry per index: features (B, D, h, w) NCHW or (B, h*w, D) NLC, or with
        `return_prefix_tokens` a `RadioOutput(summary=(B, len(summary_idxs)*D) CLS tokens, features)`.
        Unless `intermediates_only`, returns `(final RadioWithAdaptorsOutput, intermediates)`; the final output
        is `forward`'s whatever `norm` says (the official code leaves its final norm out when `norm=False`),
        with the adaptor heads `adaptors` selects (as in `forward`).
        """
        if aggregation not in ("sparse", "dense"):
            raise ValueError(f"aggregation must be 'sparse' or 'dense', got {aggregation!r}")
        if norm_alpha_scheme not in ("post-alpha", "pre-alpha", "none"):
            raise ValueError(
                f"norm_alpha_scheme must be 'post-alpha', 'pre-alpha' or 'none', got {norm_alpha_scheme!r}"
            )
        names = self._head_names(adaptors)
        image_grid_hw = self._packed_grids(pixel_values, image_grid_hw)
        packed = image_grid_hw is not None
        self._check_fmt(output_fmt, packed)
        if not self.is_vit:
            raise ValueError(
                "forward_intermediates needs a ViT backbone (model_type 'radio'); E-RADIO gives final outputs only"
            )
        depth = len(self.backbone.encoder.layer)
        take = self._take_indices(depth, indices)
        hidden, grids = self._embed(pixel_values, image_grid_hw)
        last = take[-1] if intermediates_only else depth - 1  # stop early when the final output is not needed
        keep = set(range(take[-1] + 1)) if aggregation == "dense" else set(take)
        outputs = self._run_blocks(hidden, grids, packed, keep, last)
        normalizer = self.inter_feature_normalizer if norm_alpha_scheme != "none" else None
        intermediates, start = [], 0
        for index in take:
            group = range(start, index + 1) if aggregation == "dense" else [index]
            start = index + 1
            cls_tokens, features = self._aggregate(
                outputs, group, index, grids, packed, normalizer, norm_alpha_scheme
            )
            if norm and self.final_norm is not None:
                cls_tokens, features = self.final_norm(cls_tokens), self.final_norm(features)
            features = features if packed else self._format(features, grids[0], output_fmt)
            if return_prefix_tokens:
                summary = cls_tokens[:, self.backbone.summary_idxs].flatten(1)
                intermediates.append(RadioOutput(summary=summary, features=features))
            else:
                intermediates.append(features)
        if intermediates_only:
            return intermediates
        return self._final_outputs(outputs[depth - 1], grids, packed, output_fmt, names), intermediates

    @staticmethod
    def _take_indices(depth: int, indices) -> list[int]:
        if indices is None:
            indices = depth
        if isinstance(indices, int):
            if not 1 <= indices <= depth:
                raise ValueError(f"indices={indices} must take between 1 and {depth} (the depth) last blocks")
            return list(range(depth - indices, depth))
        take = sorted({depth + i if i < 0 else i for i in indices})
        if not take or take[0] < 0 or take[-1] >= depth:
            raise ValueError(f"indices {list(indices)} must be block indices in [-{depth}, {depth - 1}]")
        return take

    def _aggregate(self, outputs, group, index, grids, packed, normalizer, scheme):
        """Mean over `group` of (CLS tokens, patch tokens), patches normalised per layer (official scheme)."""
        cls_sum, feat_sum, alpha_sum = 0, 0, 0
        for j in group:
            cls_tokens, patches = self._split_tokens(outputs[j], grids, packed)
            alpha = 1.0
            if normalizer is not None:
                patches = normalizer(patches, j, rot_index=index)
                alpha = normalizer.alphas[j]
            if scheme == "pre-alpha":
                patches, alpha = alpha * patches, 1.0
            cls_sum, feat_sum, alpha_sum = cls_sum + cls_tokens, feat_sum + patches, alpha_sum + alpha
        n = len(group)
        return cls_sum / n, (alpha_sum / n) * (feat_sum / n)
