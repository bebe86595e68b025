"""RADIO as the LLaVA-1.5 vision tower: model assembly, data, training, evaluation."""

from llava_patch.original import install

__all__ = ["install"]
