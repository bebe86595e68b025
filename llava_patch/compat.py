"""Named shims that let the original LLaVA package (llava-torch 1.2.2.post1, written for transformers
4.37) import on the transformers this project runs on. Each shim restores one removed name; none changes
behaviour. Used by the parity tests and by the original-LLaVA integration.
"""

from __future__ import annotations

import importlib

import transformers.trainer
from transformers import pytorch_utils


def _all_layernorm_layers() -> None:
    # llava/train/llava_trainer.py imports ALL_LAYERNORM_LAYERS from transformers.trainer (its
    # optimizer's no-decay rule); transformers 5 keeps the list only in transformers.pytorch_utils.
    if not hasattr(transformers.trainer, "ALL_LAYERNORM_LAYERS"):
        transformers.trainer.ALL_LAYERNORM_LAYERS = pytorch_utils.ALL_LAYERNORM_LAYERS


SHIMS = {"transformers.trainer.ALL_LAYERNORM_LAYERS": _all_layernorm_layers}


def install_llava_compat() -> None:
    """Apply every shim in `SHIMS` (idempotent)."""
    for shim in SHIMS.values():
        shim()


def import_original_llava(module: str = "llava.train.train"):
    """Import a module of the original LLaVA package after installing the shims; its import errors are
    raised as they are (LLaVA's own `llava/model/__init__.py` hides them)."""
    install_llava_compat()
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"cannot import the original LLaVA ({module}): {e}. Install it without its pinned dependencies: "
            "pip install --no-deps llava-torch==1.2.2.post1"
        ) from e
