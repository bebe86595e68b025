"""Official RADIO checkpoints -> `RadioWithAdaptors`: `convert_official(src)` and `radio-vlm convert SRC OUT`.

SRC is an official TorchHub checkpoint (`.pth.tar`: `state_dict`/`state_dict_ema` + pickled `args`) or an
official Hugging Face remote-code folder (`config.json` + `model.safetensors`, keys under `radio_model.`).
Both are first brought to the TorchHub key names, then mapped onto transformers' `RadioModel` names:

    base_model.patch_generator.{embedder, pos_embed, cls_token.token}
        -> backbone.embeddings.{patch_projection, position_embedding, cls_register_token}
    base_model.blocks.i.{norm1, attn.qkv (split q/k/v), attn.proj, norm2, mlp.fc1, mlp.fc2, ls1/ls2}
        -> backbone.encoder.layer.i.{norm1, attention.{q,k,v}_proj, attention.o_proj, norm2, mlp.*, layer_scale1/2}
    input_conditioner.*                      -> backbone.input_conditioner.*
    _heads.{index|name}.*                    -> adaptors.<name>.summary.*
    _feature_projections.{index|name}.*      -> adaptors.<name>.feature.*
    _feature_normalizer.*                    -> feature_normalizer.*
    _intermediate_feature_normalizer.*       -> inter_feature_normalizer.*

Unpickling uses `torch.load(weights_only=True)` with `argparse.Namespace` allowed: no code from a checkpoint runs.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from .configuration_radio_with_adaptors import RadioWithAdaptorsConfig
from .modeling_radio_with_adaptors import RadioWithAdaptors

# TorchHub `version` -> (patch size, max resolution, preferred resolution) (official radio/common.py RESOURCE_MAP)
KNOWN_VERSIONS: dict[str, tuple[int, int, int]] = {
    "radio_v1": (14, 1050, 378),
    "radio_v2": (16, 2048, 432),
    "radio_v2.1": (16, 2048, 432),
    "e-radio_v2": (16, 2048, 512),
    "radio_v2.5-b": (16, 2048, 768),
    "radio_v2.5-l": (16, 2048, 768),
    "radio_v2.5-h": (16, 2048, 768),
    "radio_v2.5-h-norm": (16, 2048, 768),
    "radio_v2.5-g": (14, 1792, 896),
    "c-radio_v2-g": (16, 2048, 768),
    "c-radio_v2-vlm-h": (16, 2048, 768),
    "c-radio_v3-b": (16, 2048, 512),
    "c-radio_v3-l": (16, 2048, 512),
    "c-radio_v3-h": (16, 2048, 512),
    "c-radio_v3-g": (16, 2048, 512),
    "c-radio_v4-so400m": (16, 2048, 512),
    "c-radio_v4-h": (16, 2048, 512),
}
# timm names -> attention heads, for checkpoints whose args.model_kwargs do not say (radio_official.md 1.1)
TIMM_HEADS = {
    "vit_tiny": 3,
    "vit_small": 6,
    "vit_base": 12,
    "vit_large": 16,
    "vit_huge": 16,
    "vit_giant": 24,
    "vit_so400m": 16,
}

_HF_RENAMES = [  # HF remote-code prefix -> TorchHub prefix
    ("radio_model.model.", "base_model."),
    ("radio_model.input_conditioner.", "input_conditioner."),
    ("radio_model.feature_normalizer.", "_feature_normalizer."),
    ("radio_model.inter_feature_normalizer.", "_intermediate_feature_normalizer."),
]
_IGNORED = re.compile(r"^(base_model\.reg_token|radio_model\.summary_idxs|summary_idxs)$")


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses anything but tensors, containers and allowed classes
        raise ValueError(
            f"{path}: cannot be read with torch.load(weights_only=True) allowing only argparse.Namespace ({err}). "
            "Official RADIO .pth.tar files hold state_dict/state_dict_ema and pickled args only."
        ) from err
    if not isinstance(checkpoint, dict) or not ({"state_dict", "state_dict_ema"} & set(checkpoint)):
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path}: no 'state_dict' or 'state_dict_ema' in the checkpoint (found {keys})")
    return checkpoint


def _checkpoint_args(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The training args of a `.pth.tar` (a pickled `argparse.Namespace` or a dict) as a dict."""
    args = checkpoint.get("args")
    return vars(args) if hasattr(args, "__dict__") else dict(args or {})


def _checkpoint_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """EMA weights when present, as the official loader uses them (radio_official.md 1.10)."""
    return checkpoint.get("state_dict_ema") or checkpoint["state_dict"]


def _strip_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}


def _bake_spectral(state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Replace `<m>.parametrizations.weight.*` with plain `<m>.weight`, as the official loader bakes them.

    The loader un-parametrises in training mode, so one power iteration runs first (fixture README):
    u = normalize(W v), v = normalize(W^T u), sigma = u^T W v + 1e-6, W' = W * s / sigma with
    s = softplus(scale) + 0.05 (`_sn_version` 2) or s = scale (version 1); qkv is baked per q/k/v part.
    """
    originals = [k for k in state if k.endswith(".parametrizations.weight.original")]
    state = dict(state)
    for key in originals:
        module = key.removesuffix(".parametrizations.weight.original")
        weight = state.pop(key).float()
        prefix = f"{module}.parametrizations.weight.0."
        params = {k.removeprefix(prefix): state.pop(k) for k in [k for k in state if k.startswith(prefix)]}
        num_parts = len({k.split(".")[1] for k in params if k.startswith("parts.")})
        parts = weight.chunk(num_parts) if num_parts else [weight]
        baked = []
        for i, part in enumerate(parts):
            sub = f"parts.{i}." if num_parts else ""
            try:
                scale, v, version = params[sub + "scale"], params[sub + "_v"], params.get(sub + "_sn_version")
            except KeyError as err:
                raise ValueError(
                    f"{source}: spectral parametrisation of {module} lacks {sub}{err.args[0]}"
                ) from err
            version = int(version) if version is not None else 2
            if version not in (1, 2):
                raise ValueError(f"{source}: {module} has unsupported spectral _sn_version {version}")
            u = F.normalize(part @ v.float(), dim=0, eps=1e-6)
            v = F.normalize(part.T @ u, dim=0, eps=1e-6)
            sigma = u @ part @ v + 1e-6
            s = F.softplus(scale.float()) + 0.05 if version == 2 else scale.float()
            baked.append(part * s.reshape(()) / sigma)
        state[f"{module}.weight"] = torch.cat(baked)
    leftover = [k for k in state if ".parametrizations." in k]
    if leftover:
        raise ValueError(f"{source}: unsupported parametrisation keys, e.g. {leftover[:3]}")
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file or a checkpoint folder (`model.safetensors` / `pytorch_model.bin`, either
    possibly sharded with an index json). Never arbitrary unpickling: `.safetensors`, or any other file
    with torch.load(weights_only=True) (memory-mapped when it is a zip-format file)."""
    path = Path(path)

    def load(file: Path) -> dict[str, torch.Tensor]:
        if file.suffix == ".safetensors":
            return load_file(file)
        return torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))

    if path.is_file():
        return load(path)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return load(path / name)
        index = path / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {key: value for shard in shards for key, value in load(path / shard).items()}
    raise FileNotFoundError(
        f"{path}: no model.safetensors or pytorch_model.bin (or their *.index.json) in it"
    )


def _load_hf_folder(folder: Path) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(args, TorchHub-named state, HF config) from an official remote-code folder."""
    config = json.loads((folder / "config.json").read_text())
    if "args" not in config:
        raise ValueError(f"{folder / 'config.json'}: no 'args'; not an official RADIO remote-code config")
    raw = read_state_dict(folder)
    state = {}
    for key, value in raw.items():
        match = re.match(r"radio_model\.adaptors\.([^.]+)\.(head_mlp|feat_mlp)\.(.*)", key)
        if match:
            name, head, rest = match.groups()
            state[f"{'_heads' if head == 'head_mlp' else '_feature_projections'}.{name}.{rest}"] = value
            continue
        for old, new in _HF_RENAMES:
            if key.startswith(old):
                key = new + key.removeprefix(old)
                break
        state[key] = value
    return config["args"], state, config


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _summary_idxs(args: dict, hf_state: dict[str, torch.Tensor]) -> list[int]:
    """TorchHub: first teacher index of each unique name with `use_summary`; HF: the saved buffer."""
    if "radio_model.summary_idxs" in hf_state:
        return hf_state["radio_model.summary_idxs"].tolist()
    if not args.get("cls_token_per_teacher", True):
        return [0]
    teachers, first = args.get("teachers") or [], {}
    for i, teacher in enumerate(teachers):
        if teacher.get("use_summary", True):
            first.setdefault(teacher["name"], i)
    return sorted(first.values())


def _num_registers(args: dict, num_cls: int) -> int:
    """Official `ClsToken` rule: `cpe_num_registers` if set, else `register_multiple - num_cls % register_multiple`
    (so `register_multiple` registers, not 0, when it divides `num_cls`), else none."""
    if args.get("cpe_num_registers") is not None:
        return int(args["cpe_num_registers"])
    multiple = args.get("register_multiple")
    return multiple - num_cls % multiple if multiple else 0


def _backbone_config(
    args: dict, state: dict[str, torch.Tensor], summary_idxs: list[int], source: Path
) -> dict:
    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise ValueError(
                f"{source}: missing {key}; not a RADIO ViT checkpoint with a CPE patch generator"
            )
        return state[key]

    embed_dim, patch_dim = need("base_model.patch_generator.embedder.weight").shape
    patch_size = math.isqrt(patch_dim // 3)
    num_positions = need("base_model.patch_generator.pos_embed").shape[1]
    num_tokens = need("base_model.patch_generator.cls_token.token").shape[0]
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"base_model\.blocks\.(\d+)\.", k))})
    num_cls = (
        len(_unique([t["name"] for t in args.get("teachers") or []]))
        if args.get("cls_token_per_teacher")
        else 1
    )
    expected_tokens = num_cls + _num_registers(args, num_cls)
    if num_tokens != expected_tokens:
        raise ValueError(
            f"{source}: cls_token.token has {num_tokens} rows but args give {num_cls} CLS tokens + "
            f"{expected_tokens - num_cls} registers (cls_token_per_teacher, teachers, cpe_num_registers, "
            "register_multiple): the checkpoint and its args disagree"
        )
    kwargs = args.get("model_kwargs") or {}
    model_name = str(args.get("model", ""))
    heads = kwargs.get("num_heads") or next(
        (h for p, h in TIMM_HEADS.items() if model_name.startswith(p)), None
    )
    if heads is None:
        raise ValueError(f"{source}: cannot tell the number of attention heads of args.model={model_name!r}")
    unsupported = {
        "base_model.patch_generator.embedder.bias": "a patch-embedder bias (DINOv2-architecture students)",
        "base_model.blocks.0.mlp.norm.weight": "an MLP norm (the *_mlpnorm students)",
        "base_model.patch_generator.video_embedder.weight": "a video patch embedder",
    }
    for key, what in unsupported.items():
        if key in state:
            raise ValueError(f"{source}: {key} shows {what}, which transformers' RadioModel does not have")
    if args.get("model_norm") and "base_model.norm.weight" in state:
        raise ValueError(
            f"{source}: args.model_norm=True (a final LayerNorm), which RadioModel does not have"
        )
    return {
        "hidden_size": embed_dim,
        "num_hidden_layers": depth,
        "num_attention_heads": int(heads),
        "mlp_ratio": need("base_model.blocks.0.mlp.fc1.weight").shape[0] / embed_dim,
        "qkv_bias": "base_model.blocks.0.attn.qkv.bias" in state,
        "patch_size": patch_size,
        "max_img_size": math.isqrt(num_positions) * patch_size,
        "num_cls_tokens": num_cls,
        "num_registers": num_tokens - num_cls,
        "summary_idxs": summary_idxs,
        "norm_mean": need("input_conditioner.norm_mean").flatten().tolist(),
        "norm_std": need("input_conditioner.norm_std").flatten().tolist(),
    }


def _head_spec(state: dict[str, torch.Tensor], prefix: str, source: Path) -> dict:
    """Dims, version and depth of one MLP head from its weights (official `get_mlp_info_from_state`)."""
    keys = {k.removeprefix(prefix) for k in state if k.startswith(prefix)}
    if "final.2.weight" in keys:
        version, out_key = "v2", "final.2.weight"
        num_inner = len({k.split(".")[1] for k in keys if k.startswith("blocks.")})
    elif "fc2.weight" in keys:
        version, out_key = "v1", "fc2.weight"
        num_inner = (
            len({k.split(".")[1] for k in keys if k.startswith("inner.") and k.endswith(".weight")}) // 2
        )
    else:
        raise ValueError(
            f"{source}: adaptor head {prefix}* is neither MLP v1 (fc2) nor v2 (final.2), e.g. {sorted(keys)[:4]}"
        )
    return {
        "hidden_dim": state[prefix + "fc1.weight"].shape[0],
        "output_dim": state[prefix + out_key].shape[0],
        "num_inner": num_inner,
        "mlp_version": version,
        "pre_norm": "pre_norm.0.weight" in keys,
    }


def _adaptors(args: dict, state: dict, hf_config: dict | None, source: Path) -> tuple[dict, dict]:
    """Adaptor specs and the `adaptors.<name>.{summary,feature}.*` weights, from index- or name-keyed heads."""
    teachers = args.get("teachers") or []
    per_teacher = args.get("cls_token_per_teacher", True)
    hf_adaptors = (hf_config or {}).get("adaptor_configs") or {}
    specs, weights = {}, {}
    for index, teacher in enumerate(teachers):
        name = teacher["name"]
        if name in specs:
            continue
        heads = {}
        for kind, stem in (("summary", "_heads"), ("feature", "_feature_projections")):
            prefix = next(
                (p for p in (f"{stem}.{name}.", f"{stem}.{index}.") if any(k.startswith(p) for k in state)),
                None,
            )
            if prefix is not None:
                heads[kind] = (prefix, _head_spec(state, prefix, source))
        if not heads:
            continue
        head_idx = teacher.get("token_slot", index) if per_teacher else 0
        head_idx = hf_adaptors.get(name, {}).get("head_idx", head_idx)
        spec = {"head_idx": int(head_idx), "summary": None, "feature": None}
        for kind, (prefix, head) in heads.items():
            if kind == "feature":
                factor = int(teacher.get("fd_upsample_factor") or 1)
                if head["output_dim"] % (factor * factor):
                    raise ValueError(
                        f"{source}: {prefix}* emits {head['output_dim']} channels, not a multiple of {factor}^2"
                    )
                head = {
                    **head,
                    "output_dim": head["output_dim"] // (factor * factor),
                    "upsample_factor": factor,
                }
            spec[kind] = head
            for key in [k for k in state if k.startswith(prefix)]:
                weights[f"adaptors.{name}.{kind}.{key.removeprefix(prefix)}"] = state.pop(key)
        specs[name] = spec
    stray = [k for k in state if k.startswith(("_heads.", "_feature_projections."))]
    if stray:
        raise ValueError(
            f"{source}: adaptor weights with no matching teacher in args.teachers, e.g. {stray[:3]}"
        )
    return specs, weights


def _backbone_weights(state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Rename TorchHub backbone keys to transformers' RadioModel keys (under `backbone.`)."""
    out = {}
    fixed = {
        "base_model.patch_generator.embedder.weight": "embeddings.patch_projection.weight",
        "base_model.patch_generator.pos_embed": "embeddings.position_embedding",
        "base_model.patch_generator.cls_token.token": "embeddings.cls_register_token",
        "input_conditioner.norm_mean": "input_conditioner.norm_mean",
        "input_conditioner.norm_std": "input_conditioner.norm_std",
    }
    # LayerScale is `grandma` in HF-safe checkpoints (Jan 2025), `gamma` before (radio_official.md 1.1)
    renamed = {"attn.proj": "attention.o_proj", "ls1": "layer_scale1", "ls2": "layer_scale2"}
    for key in list(state):
        if key in fixed:
            out["backbone." + fixed[key]] = state.pop(key)
            continue
        match = re.match(r"base_model\.blocks\.(\d+)\.(.+)\.(weight|bias|grandma|gamma)$", key)
        if not match:
            continue
        index, module, leaf = match.groups()
        target = f"backbone.encoder.layer.{index}."
        value = state.pop(key)
        if module == "attn.qkv":
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3)):
                out[f"{target}attention.{name}.{leaf}"] = part
        elif module in renamed:
            out[f"{target}{renamed[module]}.{'lambda1' if leaf in ('grandma', 'gamma') else leaf}"] = value
        elif module in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
            out[f"{target}{module}.{leaf}"] = value
        else:
            raise ValueError(f"{source}: unsupported block weight {key}")
    return out


def _normalizer_weights(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    config, out = {}, {}
    if "_feature_normalizer.mean" in state:
        config["feature_normalizer"] = True
        for leaf in ("mean", "tx"):
            out[f"feature_normalizer.{leaf}"] = state.pop(f"_feature_normalizer.{leaf}")
    if "_intermediate_feature_normalizer.alphas" in state:
        rotation = state["_intermediate_feature_normalizer.rotation"]
        config["intermediate_feature_normalizer"] = {
            "num_intermediates": state["_intermediate_feature_normalizer.alphas"].shape[0],
            "rot_per_layer": rotation.ndim == 3,
        }
        for leaf in ("alphas", "rotation", "means"):
            out[f"inter_feature_normalizer.{leaf}"] = state.pop(f"_intermediate_feature_normalizer.{leaf}")
    return config, out


def _metadata(source: Path, hf_config: dict | None, args: dict, patch_size: int, version: str | None) -> dict:
    """Version, max and preferred resolution: given, from the HF config, or from the known versions table.

    An HF config's `vitdet_window_size` is not applied: the official remote code only uses it for
    `min_resolution_step` and runs every block globally (radio_official.md 1.7).
    """
    hf_config = hf_config or {}
    stem = source.name.removesuffix(".tar").removesuffix(".pth")
    version = version or hf_config.get("version") or (stem if stem in KNOWN_VERSIONS else None)
    known = KNOWN_VERSIONS.get(version)
    max_resolution = hf_config.get("max_resolution")
    if max_resolution is None and args.get("cpe_max_size"):
        max_resolution = round(args["cpe_max_size"] / patch_size) * patch_size
    if max_resolution is None and known:
        max_resolution = known[1]
    preferred = hf_config.get("preferred_resolution") or (known[2] if known else None)
    if isinstance(preferred, int):
        preferred = [preferred, preferred]
    meta = {"version": version, "max_resolution": max_resolution, "preferred_resolution": preferred}
    return {k: (list(v) if k == "preferred_resolution" else v) for k, v in meta.items() if v is not None}


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
        args, state, hf_config = _load_hf_folder(source)
    elif source.is_file():
        checkpoint = _unpickle(source)
        args = _checkpoint_args(checkpoint)
        if str(args.get("model", "")).startswith("eradio"):
            return _convert_eradio(source, checkpoint, args, align_corners, version, constructor)
        state = _checkpoint_state(checkpoint)
    else:
        raise FileNotFoundError(f"{source}: no such checkpoint file or folder")
    state = _bake_spectral(_strip_module(state), source)
    summary_idxs = _summary_idxs(args, state)
    backbone = _backbone_config(args, state, summary_idxs, source)
    adaptors, adaptor_weights = _adaptors(args, state, hf_config, source)
    normalizer_config, normalizer_weights = _normalizer_weights(state)
    backbone_weights = _backbone_weights(state, source)
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
        **_metadata(source, hf_config, args, backbone["patch_size"], version),
    )
    return _load(config, {**backbone_weights, **adaptor_weights, **normalizer_weights}, source)


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


def _convert_eradio(
    source: Path,
    checkpoint: dict,
    args: dict,
    align_corners: bool,
    version: str | None,
    constructor: str | Path | None,
) -> RadioWithAdaptors:
    try:
        from .convert_eradio import convert_eradio_checkpoint, find_constructor, load_constructor
    except ImportError as err:
        raise ValueError(
            f"{source}: E-RADIO checkpoint, but radio_vlm.convert_eradio is unavailable ({err})"
        ) from err
    constructor_path = Path(constructor) if constructor else find_constructor(source)
    constructor = load_constructor(constructor_path) if constructor_path else None
    backbone_config, backbone_state = convert_eradio_checkpoint(checkpoint, constructor)
    state = _bake_spectral(_strip_module(_checkpoint_state(checkpoint)), source)
    args = {**args, "cls_token_per_teacher": False}  # E-RADIO has no CLS tokens: every head reads the summary
    adaptors, adaptor_weights = _adaptors(args, state, None, source)
    normalizer_config, normalizer_weights = _normalizer_weights(state)
    config = RadioWithAdaptorsConfig(
        backbone_config=backbone_config,
        adaptors=adaptors,
        pos_embed_align_corners=align_corners,
        **normalizer_config,
        **_metadata(source, None, args, 16, version or "e-radio_v2"),
    )
    model = RadioWithAdaptors(config)
    weights = {"backbone." + k: v for k, v in backbone_state.items()} | adaptor_weights | normalizer_weights
    model.load_state_dict(weights)
    return model.eval()


def save_converted(model: RadioWithAdaptors, out: str | Path, export_code: bool = False) -> Path:
    """Write `model` (safetensors + config, plus code with `export_code`) and its `RadioImageProcessor` config."""
    from .image_processing_radio import RadioImageProcessor

    out = Path(out)
    model.save_pretrained(out, export_code=export_code)
    RadioImageProcessor.from_model_config(model.config).save_pretrained(out, export_code=export_code)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="official .pth.tar checkpoint or Hugging Face remote-code folder")
    parser.add_argument("out", help="output folder for RadioWithAdaptors.from_pretrained / AutoModel")
    parser.add_argument(
        "--align-corners",
        action="store_true",
        help="reproduce the position interpolation of checkpoints exported before 2025-06-28",
    )
    parser.add_argument(
        "--version", default=None, help="official version string, e.g. radio_v2.5-h (metadata)"
    )
    parser.add_argument("--export-code", action="store_true", help="also write model code + auto_map")
    parser.add_argument(
        "--constructor",
        default=None,
        help="E-RADIO only: JSON of the official ERADIO(...) keyword arguments for a custom args.model "
        "(default: <checkpoint name>_constructor.json beside the checkpoint)",
    )


def run(args: argparse.Namespace) -> int:
    model = convert_official(
        args.src, align_corners=args.align_corners, version=args.version, constructor=args.constructor
    )
    out = save_converted(model, args.out, export_code=args.export_code)
    print(f"converted {args.src} -> {out} (adaptors: {', '.join(model.config.adaptors) or 'none'})")
    return 0
