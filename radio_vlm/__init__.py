"""RADIO as a Hugging Face model: adaptor heads, conversion of official checkpoints, image processor."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel

from .models.configuration_eradio import ERadioConfig
from .models.configuration_radio_llava import RadioLlavaVisionConfig
from .models.configuration_radio_with_adaptors import RadioWithAdaptorsConfig
from .models.image_processing_radio import RadioImageProcessor
from .models.modeling_eradio import ERadioModel, ERadioModelOutput
from .models.modeling_radio_llava import RadioLlavaVisionModel
from .models.modeling_radio_with_adaptors import (
    RadioOutput,
    RadioWithAdaptors,
    RadioWithAdaptorsOutput,
    Resolution,
)

AutoConfig.register(RadioWithAdaptorsConfig.model_type, RadioWithAdaptorsConfig, exist_ok=True)
AutoModel.register(RadioWithAdaptorsConfig, RadioWithAdaptors, exist_ok=True)
# one class serves both backends AutoImageProcessor may ask for
AutoImageProcessor.register(
    RadioWithAdaptorsConfig,
    image_processor_classes={"torchvision": RadioImageProcessor, "pil": RadioImageProcessor},
    exist_ok=True,
)
AutoConfig.register(ERadioConfig.model_type, ERadioConfig, exist_ok=True)
AutoModel.register(ERadioConfig, ERadioModel, exist_ok=True)
AutoConfig.register(RadioLlavaVisionConfig.model_type, RadioLlavaVisionConfig, exist_ok=True)
AutoModel.register(RadioLlavaVisionConfig, RadioLlavaVisionModel, exist_ok=True)

__all__ = [
    "ERadioConfig",
    "ERadioModel",
    "ERadioModelOutput",
    "RadioImageProcessor",
    "RadioLlavaVisionConfig",
    "RadioLlavaVisionModel",
    "RadioOutput",
    "RadioWithAdaptors",
    "RadioWithAdaptorsConfig",
    "RadioWithAdaptorsOutput",
    "Resolution",
]
