"""Configuration of `RadioLlavaVisionModel`: RADIO as the vision tower of transformers' LLaVA; and
`RadioLlavaConfig`, the LLaVA config that knows that tower without `radio_vlm` (remote code).

Exported next to the weights for `trust_remote_code`, so it imports only transformers and sibling files.
"""

from __future__ import annotations

from transformers import AutoConfig, LlavaConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_radio_with_adaptors import RadioWithAdaptorsConfig
from .token_merge import merged_token_count, merged_width, parse_token_merge

# Feature sources (exact names, concatenated on channels in the order given):
#   "backbone"        the backbone's final patch tokens (default; the AM-RADIO paper's LLaVA setting)
#   "layer:<i>"       the patch tokens after block i (negative counts from the end, -2 = LLaVA's CLIP choice)
#   "adaptor:<name>"  adaptor <name>'s feature head (a teacher's feature space, e.g. "adaptor:clip")
FEATURE_SOURCE_KINDS = ("backbone", "layer", "adaptor")


def parse_feature_source(source: str) -> tuple[str, str | int | None]:
    """ "backbone" -> ("backbone", None); "layer:-2" -> ("layer", -2); "adaptor:clip" -> ("adaptor", "clip")."""
    kind, _, arg = source.partition(":")
    if kind == "backbone" and not arg:
        return kind, None
    if kind == "layer" and arg.lstrip("-").isdigit():
        return kind, int(arg)
    if kind == "adaptor" and arg:
        return kind, arg
    raise ValueError(f"feature source {source!r} is not one of 'backbone', 'layer:<int>', 'adaptor:<name>'")


class RadioLlavaVisionConfig(PretrainedConfig):
    r"""Configuration of [`RadioLlavaVisionModel`].

    Args:
        radio_config (`RadioWithAdaptorsConfig` or `dict`): the wrapped RADIO model.
        feature_sources (`list[str]`, defaults to `["backbone"]`): which patch features the LLM sees,
            concatenated on channels (see `FEATURE_SOURCE_KINDS` above).
        output_layernorm (`bool`, defaults to `False`): a LayerNorm on the output features (RADIOv1's
            activations have a std of tens; the authors added one, radio_official.md 6).
        trainable (`bool`, defaults to `False`): False freezes the tower (requires_grad False). Either way
            the tower stays in eval mode (no training-time CPE) when the LLaVA model trains.
        token_merge (`str`, defaults to `"none"`): "none" | "unshuffle:s" | "pool:s", the merge of the patch
            grid before the projector (see `token_merge.py`); "unshuffle:s" multiplies `hidden_size` by s^2.

    `hidden_size` (the projector's input width) is derived from the fields above, never set.
    """

    model_type = "radio_llava_vision"
    sub_configs = {"radio_config": RadioWithAdaptorsConfig}
    radio_config: dict | RadioWithAdaptorsConfig | None = None
    feature_sources: list[str] | None = None
    output_layernorm: bool = False
    trainable: bool = False
    token_merge: str = "none"

    def __post_init__(self, **kwargs):
        if self.radio_config is None:
            self.radio_config = RadioWithAdaptorsConfig()
        elif isinstance(self.radio_config, dict):
            self.radio_config = RadioWithAdaptorsConfig(**self.radio_config)
        self.feature_sources = list(self.feature_sources or ["backbone"])
        max_resolution = self.radio_config.max_resolution
        parse_token_merge(self.token_merge, max_resolution // self.patch_size if max_resolution else None)
        self.hidden_size = merged_width(self.feature_width, self.token_merge)
        # a saved config holds a copy of the derived value, stale once a field above changes
        kwargs.pop("hidden_size", None)
        super().__post_init__(**kwargs)

    @property
    def feature_width(self) -> int:
        """Channels of one patch token before the merge: the feature sources' widths summed."""
        return sum(self.source_width(s) for s in self.feature_sources)

    def source_width(self, source: str) -> int:
        """Channels that feature source `source` contributes."""
        kind, arg = parse_feature_source(source)
        radio = self.radio_config
        if kind == "adaptor":
            spec = radio.adaptors.get(arg)
            if spec is None or spec["feature"] is None:
                heads = sorted(k for k, v in radio.adaptors.items() if v["feature"] is not None)
                raise ValueError(
                    f"feature source {source!r}: the RADIO model has no feature head {arg!r} ({heads})"
                )
            if spec["feature"]["upsample_factor"] != 1:
                raise ValueError(f"feature source {source!r}: an upsampling head changes the token count")
            return spec["feature"]["output_dim"]
        if kind == "layer":
            depth = radio.backbone_config.num_hidden_layers
            if not -depth <= arg < depth:
                raise ValueError(f"feature source {source!r}: the backbone has {depth} blocks")
        return radio.embed_dim

    @property
    def patch_size(self) -> int:
        """RADIO's patch size p (px per side of one patch token)."""
        return self.radio_config.patch_size

    @property
    def merge_factor(self) -> int:
        """s of the token merge (1 for "none"): one LLM token covers s x s patches."""
        return parse_token_merge(self.token_merge)[1]

    def num_image_tokens(self, height: int, width: int) -> int:
        """Tokens the tower gives the LLM for an input of `height` x `width` px (multiples of p)."""
        return merged_token_count(height // self.patch_size, width // self.patch_size, self.token_merge)


class RadioLlavaConfig(LlavaConfig):
    r"""`LlavaConfig` whose `vision_config` is a [`RadioLlavaVisionConfig`].

    A run's config.json is a stock LLaVA one (`model_type="llava"`): with `radio_vlm` imported, `LlavaConfig`
    finds the tower's `model_type` in AutoConfig. Where radio_vlm is not installed, `radio-llava export
    --remote-code` points `auto_map["AutoConfig"]` here, so the same file loads with `trust_remote_code=True`.
    """

    sub_configs_defaults = {
        "vision_config": RadioLlavaVisionConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }
