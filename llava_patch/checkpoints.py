"""What a RADIO-LLaVA run writes besides the Hugging Face model files.

OUTPUT_DIR/radio_llava_run.json      the resolved run settings (what `merge-lora` rebuilds the base from)
OUTPUT_DIR/mm_projector.bin          pretrain: the projector alone, LLaVA's key names
                                     (model.mm_projector.{0,2}.{weight,bias}), beside config.json and the
                                     processor; the LLM is not written (as LLaVA). Also in every
                                     checkpoint-N/, with what resume needs (optimizer, scheduler, RNG and
                                     trainer state; under DeepSpeed its checkpoint without frozen weights)
OUTPUT_DIR/bad_samples.json          the samples skipped as bad, one entry each (see data.BadSampleLog)
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
BAD_SAMPLES_FILE = "bad_samples.json"
# native transformers name <-> original LLaVA name (reference llava.md 4.1)
_NATIVE_TO_LLAVA = {"linear_1": "0", "linear_2": "2"}
_PROJECTOR = "multi_modal_projector."


def save_projector(projector: torch.nn.Module, directory: str | Path) -> Path:
    """`directory/mm_projector.bin` from the model's projector under LLaVA's names
    (`model.mm_projector.{0,2}.{weight,bias}`). Under ZeRO-3, call it inside
    `gathered(projector.parameters())`."""
    state = {}
    for name, value in projector.state_dict().items():
        layer, param = name.split(".", 1)
        state[f"model.mm_projector.{_NATIVE_TO_LLAVA[layer]}.{param}"] = value.detach().cpu().clone()
    path = Path(directory) / PROJECTOR_FILE
    torch.save(state, path)
    return path


def load_projector(model, source: str | Path) -> Path:
    """Load projector weights into `model` (a LlavaForConditionalGeneration) from `mm_projector.bin`
    (LLaVA's names, e.g. written by original LLaVA's pretraining or by our pretrain stage), a folder holding
    one, or a Hugging Face model folder (model.safetensors). Returns the file read. Works on a model that
    DeepSpeed ZeRO-3 partitioned (the projector is gathered, loaded, and partitioned again)."""
    from .model import gathered

    source = Path(source)
    candidates = [source] if source.is_file() else [source / PROJECTOR_FILE, source / "model.safetensors"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(
            f"--pretrained-projector {source}: found neither a file nor {PROJECTOR_FILE} / "
            "model.safetensors in it"
        )
    tensors = read_state_dict(path)
    llava_to_native = {v: k for k, v in _NATIVE_TO_LLAVA.items()}
    state = {}  # native name -> (name in the file, tensor)
    for key, value in tensors.items():
        if key.startswith("model.mm_projector."):
            layer, param = key[len("model.mm_projector.") :].split(".", 1)
            state[f"{llava_to_native[layer]}.{param}"] = (key, value)
    if not state:
        state = {
            key.split(_PROJECTOR, 1)[1].replace("modules_to_save.default.", ""): (key, value)
            for key, value in tensors.items()
            if _PROJECTOR in key and "original_module" not in key
        }
    if not state:
        raise ValueError(
            f"{path} holds no projector weights (model.mm_projector.* or *.multi_modal_projector.*)"
        )
    projector = model.model.multi_modal_projector
    with gathered(projector.parameters(), modifier_rank=0), torch.no_grad():
        own = projector.state_dict()
        if sorted(own) != sorted(state):
            raise ValueError(
                f"{path}: projector tensors {sorted(k for k, _ in state.values())} do not match this model's "
                f"projector ({sorted(own)}): is it an mlp2x_gelu projector?"
            )
        for name, (key, value) in state.items():
            if tuple(value.shape) != tuple(own[name].shape):
                raise ValueError(
                    f"{path}: tensor {key} has shape {tuple(value.shape)} but this model's projector needs "
                    f"{tuple(own[name].shape)} ({name}): was it trained with the same vision tower (feature "
                    "sources, --token-merge) and LLM?"
                )
        for name, (_, value) in state.items():
            own[name].copy_(value)
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
