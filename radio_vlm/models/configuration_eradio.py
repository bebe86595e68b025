"""E-RADIO configuration: the paper's efficient hybrid CNN-transformer student (AM-RADIO section 5.1).

The defaults are E-RADIO-L, the official `eradio` = `eradio_large_fullres_ws16` TorchHub model
(reference/radio_official.md section 5): about 390 M parameters, stride-16 features with 1536 channels.
"""

from __future__ import annotations

from transformers import PreTrainedConfig
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

# OpenAI CLIP mean/std, the official RADIO input conditioner's constants (radio_official.md 1.4)


class ERadioConfig(PreTrainedConfig):
    r"""
    Configuration of [`ERadioModel`]. Stage `i` (0..3) has `dim * 2**i` channels at stride `4 * 2**i`;
    stages 0-1 are YOLOv8 C2f conv blocks, stages 2-3 windowed-attention blocks.

    dim (`int`, defaults to 192): channels after the stem, i.e. of stage 0.
    in_dim (`int`, defaults to 64): channels between the stem's two stride-2 3x3 convolutions.
    depths (`list[int]`, defaults to `[3, 3, 5, 5]`): C2f bottlenecks (stages 0-1) or multi-resolution
        attention blocks (stages 2-3) per stage.
    num_heads (`list[int]`, defaults to `[2, 4, 8, 16]`): attention heads per stage (only 2-3 are used).
    window_size (`int`, defaults to 16): the trained attention window. The continuous position bias
        normalises relative coordinates by it, also after `ERadioModel.set_optimal_window_size` changes the
        window the model runs with (a runtime setting, not saved in the config).
    sr_ratios (`list[list[int]]`, defaults to `[[2, 1], [1]]`): for each transformer stage, the sub-sample
        ratio of each attention block of a multi-resolution block: 2 = "global" windows on a 2x
        downsampled map (strided conv down, transposed conv up), 1 = local windows after a 3x3 conv.
    mlp_ratio (`float`, defaults to 4.0): MLP hidden width / channels in the attention blocks.
    cpb_mlp_hidden (`int`, defaults to 512): hidden width of the SwinV2 continuous position bias MLP.
    conv_groups_ratio (`float`, defaults to 0.0): groups of the 3x3 conv before local attention are
        `max(1, int(conv_groups_ratio * channels))`: 0 = dense, 1 = depthwise.
    full_features_head_dim (`int`, defaults to 1536): channels of the stride-16 neck output (= hidden size).
    neck_start_stage (`int`, defaults to 2): first stage the neck merges; stage 2 has stride 16.
    layer_norm_eps (`float`, defaults to 1e-5): LayerNorm epsilon of the attention blocks (torch default).
    batch_norm_eps (`float`, defaults to 1e-5): BatchNorm epsilon (torch default).
    norm_mean / norm_std (`list[float]`): input conditioner; pixels come in [0, 1] RGB.
    max_img_size (`int`, defaults to 2048): largest supported input side in px (model card), named as
        transformers' `RadioConfig` so `RadioWithAdaptorsConfig.max_resolution` picks it up.
    initializer_range (`float`, defaults to 0.02): std of the truncated normal init of Linear weights.
    """

    model_type = "eradio"

    dim: int = 192
    in_dim: int = 64
    depths: list[int] | None = None
    num_heads: list[int] | None = None
    window_size: int = 16
    sr_ratios: list[list[int]] | None = None
    mlp_ratio: float = 4.0
    cpb_mlp_hidden: int = 512
    conv_groups_ratio: float = 0.0
    full_features_head_dim: int = 1536
    neck_start_stage: int = 2
    layer_norm_eps: float = 1e-5
    batch_norm_eps: float = 1e-5
    norm_mean: list[float] | tuple[float, float, float] = tuple(OPENAI_CLIP_MEAN)
    norm_std: list[float] | tuple[float, float, float] = tuple(OPENAI_CLIP_STD)
    max_img_size: int = 2048
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.depths = list(self.depths) if self.depths is not None else [3, 3, 5, 5]
        self.num_heads = list(self.num_heads) if self.num_heads is not None else [2, 4, 8, 16]
        self.sr_ratios = [list(r) for r in self.sr_ratios] if self.sr_ratios is not None else [[2, 1], [1]]
        self.norm_mean = list(self.norm_mean)
        self.norm_std = list(self.norm_std)
        super().__post_init__(**kwargs)
        self.validate_architecture()  # not @strict (nested lists), so check here

    def validate_architecture(self):
        super().validate_architecture()
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ValueError(
                f"ERadioConfig: depths {self.depths} and num_heads {self.num_heads} need 4 entries "
                "(stem stride 4, two conv stages, two transformer stages)"
            )
        if len(self.sr_ratios) != 2 or any(not r or any(s not in (1, 2) for s in r) for r in self.sr_ratios):
            raise ValueError(
                f"ERadioConfig.sr_ratios={self.sr_ratios}: give one non-empty list of ratios (1 or 2) for "
                "each of the two transformer stages, e.g. [[2, 1], [1]]"
            )
        if not 0 <= self.neck_start_stage <= 3:
            raise ValueError(f"ERadioConfig.neck_start_stage={self.neck_start_stage} must be in 0..3")
        if self.window_size < 2:  # the position bias divides relative coordinates by window_size - 1
            raise ValueError(f"ERadioConfig.window_size={self.window_size} must be >= 2")

    @property
    def hidden_size(self) -> int:
        """Channels of the output features (the neck's width)."""
        return self.full_features_head_dim

    @property
    def num_channels(self) -> int:
        """RGB input, as the official E-RADIO builders (in_chans=3)."""
        return 3

    @property
    def patch_size(self) -> int:
        """Output stride of the features: each token covers 16x16 input pixels."""
        return 16

    @property
    def min_resolution_step(self) -> int:
        """Inputs must be multiples of 32, the stride of the last stage."""
        return 32


__all__ = ["ERadioConfig"]
