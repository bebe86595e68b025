"""Official RADIO checkpoints -> `RadioWithAdaptors`: `convert_official(src)`.

SRC is an official TorchHub checkpoint (`.pth.tar`: `state_dict`/`state_dict_ema` + pickled `args`) or an
official Hugging Face remote-code folder (`config.json` + `model.safetensors`, keys under `radio_model.`).
Both are first brought to the TorchHub key names (`checkpoint`), spectral weights are baked (`spectral`), then
the backbone (`vit`, `eradio`), adaptor heads and normalizers (`adaptors`) are mapped onto transformers'
`RadioModel` names and our adaptor modules, with the release metadata (`releases`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..models.configuration_radio_with_adaptors import RadioWithAdaptorsConfig
from ..models.modeling_radio_with_adaptors import RadioWithAdaptors
from .adaptors import adaptor_specs, normalizer_weights
from .checkpoint import checkpoint_args, checkpoint_state, load_hf_folder, strip_module, unpickle_checkpoint
from .eradio import convert_eradio
from .releases import release_metadata
from .spectral import bake_spectral
from .vit import backbone_config, backbone_weights, summary_idxs

_IGNORED = re.compile(r"^(base_model\.reg_token|radio_model\.summary_idxs|summary_idxs)$")


def convert_official(
    src: str | Path,
    align_corners: bool = False,
    version: str | None = None,
    constructor: str | Path | None = None,
) -> RadioWithAdaptors:
    """Convert an official checkpoint (`.pth.tar` or HF remote-code folder) into a `RadioWithAdaptors`.

    align_corners: True reproduces the position interpolation of checkpoints exported before 2025-06-28.
    version: official version string (e.g. "radio_v2.5-h") for the resolution metadata; by default read
        from the HF config or the `.pth.tar` file name when it is a known version.
    Every adaptor head in the weights is converted, also where an HF config lists no `adaptor_names`.
    constructor: E-RADIO only, a JSON of the official `ERADIO(...)` keyword arguments for a checkpoint
        whose `args.model` is not a registered name (default: `<name>_constructor.json` beside it).
    """
    source = Path(src)
    hf_config = None
    if source.is_dir():
        args, state, hf_config = load_hf_folder(source)
    elif source.is_file():
        checkpoint = unpickle_checkpoint(source)
        args = checkpoint_args(checkpoint)
        if str(args.get("model", "")).startswith("eradio"):
            return convert_eradio(source, checkpoint, args, align_corners, version, constructor)
        state = checkpoint_state(checkpoint)
    else:
        raise FileNotFoundError(f"{source}: no such checkpoint file or folder")
    state = bake_spectral(strip_module(state), source)
    backbone = backbone_config(args, state, summary_idxs(args, state), source)
    adaptors, adaptor_state = adaptor_specs(args, state, hf_config, source)
    normalizer_config, normalizer_state = normalizer_weights(state)
    backbone_state = backbone_weights(state, source)
    leftover = [
        k
        for k in state
        if not _IGNORED.match(k) and not (k.startswith("base_model.norm.") and not args.get("model_norm"))
    ]
    if leftover:
        raise ValueError(f"{source}: weights this converter does not know, e.g. {leftover[:5]}")
    config = RadioWithAdaptorsConfig(
        backbone_config=backbone,
        adaptors=adaptors,
        pos_embed_align_corners=align_corners,
        **normalizer_config,
        **release_metadata(source, hf_config, args, backbone["patch_size"], version),
    )
    return _load(config, {**backbone_state, **adaptor_state, **normalizer_state}, source)


def _load(
    config: RadioWithAdaptorsConfig, weights: dict[str, torch.Tensor], source: Path
) -> RadioWithAdaptors:
    model = RadioWithAdaptors(config)
    expected = model.state_dict()
    # LayerScale-free students have no ls weights: their lambda1 stays the identity (1.0)
    weights.update(
        {k: torch.ones_like(v) for k, v in expected.items() if k.endswith("lambda1") and k not in weights}
    )
    weights["backbone.summary_idxs"] = expected["backbone.summary_idxs"]
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source}: converted weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}, shapes {wrong[:5]}"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()})
    return model.eval()


def save_converted(model: RadioWithAdaptors, out: str | Path, export_code: bool = False) -> Path:
    """Write `model` (safetensors + config, plus code with `export_code`) and its `RadioImageProcessor` config."""
    from ..models.image_processing_radio import RadioImageProcessor

    out = Path(out)
    model.save_pretrained(out, export_code=export_code)
    RadioImageProcessor.from_model_config(model.config).save_pretrained(out, export_code=export_code)
    return out
