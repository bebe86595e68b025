"""Reading official checkpoints without running their code: TorchHub `.pth.tar` files and HF remote-code folders.

`unpickle_checkpoint` uses `torch.load(weights_only=True)` with only `argparse.Namespace` allowed; `read_state_dict`
reads safetensors or zip/legacy `.bin` files (sharded or not) the same safe way. An HF folder's keys are brought to
the TorchHub names (`radio_model.model.*` -> `base_model.*`, adaptor MLPs -> `_heads.*` / `_feature_projections.*`)
so one key map serves both forms: `read_official` gives (args, state, HF config) for either. Custom student
architectures come with a constructor JSON (`find_constructor`, `load_constructor`).
"""

from __future__ import annotations

import argparse
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

_HF_RENAMES = [  # HF remote-code prefix -> TorchHub prefix
    ("radio_model.model.", "base_model."),
    ("radio_model.input_conditioner.", "input_conditioner."),
    ("radio_model.feature_normalizer.", "_feature_normalizer."),
    ("radio_model.inter_feature_normalizer.", "_intermediate_feature_normalizer."),
]


def unpickle_checkpoint(path: Path) -> dict[str, Any]:
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


def checkpoint_args(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The training args of a `.pth.tar` (a pickled `argparse.Namespace` or a dict) as a dict."""
    args = checkpoint.get("args")
    return vars(args) if hasattr(args, "__dict__") else dict(args or {})


def checkpoint_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """EMA weights whenever present (also beside a different `state_dict`), as the official loader uses them."""
    return checkpoint["state_dict_ema"] if "state_dict_ema" in checkpoint else checkpoint["state_dict"]


def strip_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}


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


def load_hf_folder(folder: Path) -> tuple[dict, dict[str, torch.Tensor], dict]:
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


def read_official(source: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict | None]:
    """(args, TorchHub-named state, HF config or None) of an official `.pth.tar` or HF remote-code folder."""
    if source.is_dir():
        return load_hf_folder(source)
    if source.is_file():
        checkpoint = unpickle_checkpoint(source)
        return checkpoint_args(checkpoint), checkpoint_state(checkpoint), None
    raise FileNotFoundError(f"{source}: no such checkpoint file or folder")


def find_constructor(checkpoint_path: str | Path) -> Path | None:
    """`<name>_constructor.json` beside `<name>.pth.tar` (or beside the folder `<name>`), or None."""
    path = Path(checkpoint_path)
    stem = path.name.removesuffix(".tar").removesuffix(
        ".pth"
    )  # release names have dots: radio_v2.5-g.pth.tar
    candidate = path.with_name(f"{stem}_constructor.json")
    return candidate if candidate.is_file() else None


def load_constructor(path: str | Path) -> dict[str, Any]:
    """Read a constructor JSON (a dict of the builder's keyword arguments for a custom `args.model`)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"constructor JSON {path}: cannot read it ({err})") from err
    if not isinstance(value, dict):
        raise ValueError(
            f"constructor JSON {path}: expected a JSON object of the builder's keyword arguments"
        )
    return value


def check_constructor(
    kwargs: dict[str, Any], what: str, known: set[str], required: dict[str, tuple[Any, Any]]
) -> None:
    """Refuse builder keyword arguments outside `known | required`, and `required` ones (name -> (the value this
    converter reproduces, the builder's default)) with another value. `what` names the builder in the errors."""
    unknown = set(kwargs) - known - set(required)
    if unknown:
        raise ValueError(f"{what}: unknown arguments {sorted(unknown)}")
    for name, (value, default) in required.items():
        if kwargs.get(name, default) != value:
            raise ValueError(
                f"{what}: {name}={kwargs.get(name, default)!r} is not supported (only {name}={value!r})"
            )
