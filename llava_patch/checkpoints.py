"""What a RADIO-LLaVA run writes besides the Hugging Face model files.

OUTPUT_DIR/radio_llava_run.json      the resolved run settings (what `merge-lora` rebuilds the base from)
OUTPUT_DIR/mm_projector.bin          pretrain: the projector alone, LLaVA's key names
                                     (model.mm_projector.{0,2}.{weight,bias}); also in every checkpoint-N/
OUTPUT_DIR/non_lora_trainables.bin   lora: every trained non-LoRA weight (projector, unfrozen tower), own names;
                                     also in every checkpoint-N/, next to adapter_model.safetensors
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from radio_vlm.convert import read_state_dict

RUN_CONFIG = "radio_llava_run.json"
PROJECTOR_FILE = "mm_projector.bin"
NON_LORA_FILE = "non_lora_trainables.bin"
# native transformers name <-> original LLaVA name (reference llava.md 4.1)
_NATIVE_TO_LLAVA = {"linear_1": "0", "linear_2": "2"}
_PROJECTOR = "multi_modal_projector."


def projector_state(state_dict: dict[str, torch.Tensor], llava_names: bool = True) -> dict[str, torch.Tensor]:
    """The projector's tensors from a (possibly peft-wrapped) model state dict, keyed
    `model.mm_projector.{0,2}.*` (LLaVA) or `linear_{1,2}.*` (the module's own names)."""
    out = {}
    for key, value in state_dict.items():
        if _PROJECTOR not in key or "original_module" in key:  # peft keeps an untrained copy
            continue
        name = key.split(_PROJECTOR, 1)[1].replace("modules_to_save.default.", "")
        layer, param = name.split(".", 1)
        out[f"model.mm_projector.{_NATIVE_TO_LLAVA[layer]}.{param}" if llava_names else name] = (
            value.detach().cpu()
        )
    return out


def save_projector(state_dict: dict[str, torch.Tensor], directory: str | Path) -> Path:
    path = Path(directory) / PROJECTOR_FILE
    torch.save(projector_state(state_dict), path)
    return path


def load_projector(model, source: str | Path) -> Path:
    """Load projector weights into `model` (a LlavaForConditionalGeneration) from `mm_projector.bin`
    (LLaVA's names, e.g. written by original LLaVA's pretraining or by our pretrain stage), a folder holding
    one, or a Hugging Face model folder (model.safetensors). Returns the file read."""
    source = Path(source)
    candidates = [source] if source.is_file() else [source / PROJECTOR_FILE, source / "model.safetensors"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"--pretrained-projector {source}: found neither a file nor {PROJECTOR_FILE} / model.safetensors in it"
        )
    tensors = read_state_dict(path)
    llava_to_native = {v: k for k, v in _NATIVE_TO_LLAVA.items()}
    state = {}
    for key, value in tensors.items():
        if key.startswith("model.mm_projector."):
            layer, param = key[len("model.mm_projector.") :].split(".", 1)
            state[f"{llava_to_native[layer]}.{param}"] = value
    state = state or projector_state(tensors, llava_names=False)
    if not state:
        raise ValueError(
            f"{path} holds no projector weights (model.mm_projector.* or *.multi_modal_projector.*)"
        )
    projector = model.model.multi_modal_projector
    expected = {k: tuple(v.shape) for k, v in projector.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        raise ValueError(
            f"{path}: projector shapes {got} do not fit this model's {expected}: was it trained with the same "
            "vision tower (feature sources) and LLM?"
        )
    projector.load_state_dict({k: v.to(projector.linear_1.weight.dtype) for k, v in state.items()})
    return path


def write_run_config(directory: str | Path, settings: dict) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / RUN_CONFIG).write_text(json.dumps(settings, indent=2, sort_keys=True, default=str))


def read_run_config(directory: str | Path) -> dict:
    """The settings of the run that wrote `directory` (a run folder or one of its checkpoint-N folders)."""
    directory = Path(directory)
    for candidate in (directory / RUN_CONFIG, directory.parent / RUN_CONFIG):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    raise FileNotFoundError(
        f"{directory}: no {RUN_CONFIG} here or in its parent; is it a radio-llava run folder?"
    )
