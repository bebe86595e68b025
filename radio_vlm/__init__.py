"""RADIO as a Hugging Face model: adaptor heads, conversion of official checkpoints, image processor."""

from transformers import AutoConfig, AutoModel

from .configuration_radio_with_adaptors import RadioWithAdaptorsConfig
from .modeling_radio_with_adaptors import RadioOutput, RadioWithAdaptors, RadioWithAdaptorsOutput, Resolution

AutoConfig.register(RadioWithAdaptorsConfig.model_type, RadioWithAdaptorsConfig, exist_ok=True)
AutoModel.register(RadioWithAdaptorsConfig, RadioWithAdaptors, exist_ok=True)

__all__ = [
    "RadioOutput",
    "RadioWithAdaptors",
    "RadioWithAdaptorsConfig",
    "RadioWithAdaptorsOutput",
    "Resolution",
]
