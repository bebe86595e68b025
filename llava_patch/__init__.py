"""RADIO as the LLaVA-1.5 vision tower: model assembly, data, training, evaluation."""

import importlib

from llava_patch.original import install

# Imported on first use, so that light commands (`radio-llava score`) do not load transformers' LLaVA.
_LAZY = {
    "build": "llava_patch.model",
    "build_model": "llava_patch.model",
    "load_pretrained": "llava_patch.model",
    "load_vision_tower": "llava_patch.model",
    "RadioLlavaProcessor": "llava_patch.processing",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llava_patch' has no attribute {name!r}")


__all__ = ["RadioLlavaProcessor", "build", "build_model", "install", "load_pretrained", "load_vision_tower"]
