"""Official RADIO checkpoints -> `RadioWithAdaptors`: `convert_official(src)`.

SRC is an official TorchHub checkpoint (`.pth.tar`: `state_dict`/`state_dict_ema` + pickled `args`) or an
official Hugging Face remote-code folder (`config.json` + `model.safetensors`, keys under `radio_model.`).
Both are first brought to the TorchHub key names (`checkpoint`) and spectral weights are baked (`spectral`).
The student is found by `args.model` (`students`, `eradio`) and its family by the weights: a timm ViT,
a DINOv2 student (`base_model.inner.*`) or E-RADIO. Every `args` setting must be understood (`settings`);
then the backbone (`vit`, `eradio`), the adaptor heads and normalizers (`adaptors`) are mapped onto
transformers' `RadioModel` names and our modules, with the release metadata (`releases`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch

from ..models.configuration_radio_with_adaptors import RadioWithAdaptorsConfig
from ..models.modeling_radio_with_adaptors import RadioWithAdaptors
from .adaptors import adaptor_specs, normalizer_weights
from .checkpoint import find_constructor, load_constructor, read_official, strip_module
from .eradio import ERADIO_ARCHITECTURES, eradio_backbone
from .releases import release_metadata
from .settings import VIT_MODEL_KWARGS, check_settings
from .spectral import bake_spectral
from .students import STUDENTS, UNSUPPORTED_STUDENTS, Student, dinov2_student_from_constructor
from .vit import backbone_config, backbone_weights, from_dinov2_names, summary_idxs

# keys the official loader does not read: timm's leftover register token of the *_v2 builders, the HF buffer
_IGNORED = re.compile(r"^(base_model\.reg_token|radio_model\.summary_idxs|summary_idxs)$")


def _find_student(
    args: dict, state: dict[str, torch.Tensor], source: Path, constructor: str | Path | None
) -> tuple[str, Student | None, dict | None]:
    """(family, Student for the ViT families, constructor JSON for custom names) of `args.model`."""
    name = str(args.get("model", ""))
    constructor_path = Path(constructor) if constructor else find_constructor(source)
    if name in ERADIO_ARCHITECTURES or name.startswith("eradio"):
        return "eradio", None, load_constructor(constructor_path) if constructor_path else None
    if name in UNSUPPORTED_STUDENTS:
        raise ValueError(
            f"{source}: args.model={name!r} is {UNSUPPORTED_STUDENTS[name]}, which is not supported"
        )
    dinov2 = any(k.startswith("base_model.inner.") for k in state)
    student = STUDENTS.get(name)
    if student is not None:
        if (student.family == "dinov2") != dinov2:
            raise ValueError(
                f"{source}: args.model={name!r} is a {student.family} student, but the weights are "
                f"{'a DINOv2 wrapper (base_model.inner.*)' if dinov2 else 'a timm ViT'}"
            )
        return student.family, student, None
    if dinov2 and constructor_path:  # a custom DINOv2 student: its widths come from the constructor JSON
        return "dinov2", dinov2_student_from_constructor(name, load_constructor(constructor_path)), None
    hint = (
        "; for a custom DINOv2 student pass its DinoVisionTransformer(...) keyword arguments as a constructor JSON "
        "(--constructor FILE, or <checkpoint>_constructor.json beside it)"
        if dinov2
        else ""
    )
    raise ValueError(
        f"{source}: args.model={name!r} is not an official RADIO student architecture (known: "
        f"{', '.join(sorted(STUDENTS))}, {', '.join(sorted(ERADIO_ARCHITECTURES))}){hint}"
    )


def convert_official(
    src: str | Path,
    align_corners: bool = False,
    version: str | None = None,
    constructor: str | Path | None = None,
    adaptors: Iterable[str] | None = None,
    inert_args: Iterable[str] = (),
) -> RadioWithAdaptors:
    """Convert an official checkpoint (`.pth.tar` or HF remote-code folder) into a `RadioWithAdaptors`.

    align_corners: True reproduces the position interpolation of checkpoints exported before 2025-06-28.
    version: official release name (e.g. "radio_v2.5-h", see `radio-vlm models`) for the metadata a checkpoint
        lacks; by default read from the HF config or recognised by the file name.
    constructor: a JSON of the builder's keyword arguments for a student whose `args.model` is a custom name
        (E-RADIO, DINOv2; default: `<name>_constructor.json` beside the checkpoint).
    adaptors: the adaptor heads to keep (default: every head in the weights, also where an HF config lists no
        `adaptor_names`); the others are dropped, so a head this converter cannot read can be left out.
    inert_args: settings (`key` of args, `model_kwargs.key`, `teachers.key`, `config.key` of an HF config.json)
        to accept as not changing the model, where this converter's table (`settings.py`) does not know them.
    """
    source = Path(src)
    args, state, hf_config = read_official(source)
    state = strip_module(state)
    family, student, eradio_constructor = _find_student(args, state, source, constructor)
    check_settings(args, VIT_MODEL_KWARGS if family == "vit" else None, source, inert_args, hf_config)
    spectral = args.get("spectral_reparam")
    if isinstance(spectral, dict):  # configure_spectral_reparam_from_args: the dict form's own defaults
        state = bake_spectral(
            state, source, spectral.get("n_power_iterations", 1), spectral.get("eps", 1e-12)
        )
    else:
        state = bake_spectral(state, source)
    if family == "eradio":
        backbone, backbone_state = eradio_backbone(args, state, eradio_constructor)
        variants, embed_dim, patch_size = {}, backbone.hidden_size, 16
    else:
        if family == "dinov2":
            state = from_dinov2_names(state)
        summary = summary_idxs(args, state, student)
        backbone, variants = backbone_config(args, state, student, str(args.get("model")), summary, source)
        backbone_state = backbone_weights(state, variants["final_norm"], source)
        embed_dim, patch_size = backbone["hidden_size"], backbone["patch_size"]
    per_teacher_cls = family == "vit" and args.get("cls_token_per_teacher", True)
    selected = list(adaptors) if adaptors is not None else None
    adaptor_config, adaptor_state = adaptor_specs(
        args, state, hf_config, embed_dim, source, selected, per_teacher_cls
    )
    normalizer_config, normalizer_state = normalizer_weights(state)
    leftover = [k for k in state if not _IGNORED.match(k) and not k.startswith("base_model.norm.")]
    if leftover:
        raise ValueError(f"{source}: weights this converter does not know, e.g. {leftover[:5]}")
    config = RadioWithAdaptorsConfig(
        backbone_config=backbone,
        adaptors=adaptor_config,
        pos_embed_align_corners=align_corners,
        **variants,
        **normalizer_config,
        **release_metadata(source, hf_config, args, patch_size, version),
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
    if "backbone.summary_idxs" in expected:
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
