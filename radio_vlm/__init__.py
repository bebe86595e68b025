"""RADIO as a Hugging Face model: adaptor heads, conversion of official checkpoints, image processor."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor

from .models.configuration_eradio import ERadioConfig
from .models.configuration_radio_llava import RadioLlavaConfig, RadioLlavaVisionConfig
from .models.configuration_radio_with_adaptors import RadioWithAdaptorsConfig
from .models.image_processing_radio import RadioImageProcessor
from .models.modeling_eradio import ERadioModel, ERadioModelOutput
from .models.modeling_radio_llava import RadioLlavaForConditionalGeneration, RadioLlavaVisionModel
from .models.modeling_radio_with_adaptors import (
    RadioOutput,
    RadioWithAdaptors,
    RadioWithAdaptorsOutput,
    Resolution,
)
from .models.processing_radio_llava import RadioLlavaProcessor

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
# A run's processor_config.json names "RadioLlavaProcessor": AutoProcessor finds the class by that name among
# registered processors. (Runs stay model_type "llava", so AutoConfig / AutoModelForImageTextToText need no entry.)
AutoProcessor.register(RadioLlavaConfig, RadioLlavaProcessor, exist_ok=True)

__all__ = [
    "ERadioConfig",
    "ERadioModel",
    "ERadioModelOutput",
    "RadioImageProcessor",
    "RadioLlavaConfig",
    "RadioLlavaForConditionalGeneration",
    "RadioLlavaProcessor",
    "RadioLlavaVisionConfig",
    "RadioLlavaVisionModel",
    "RadioOutput",
    "RadioWithAdaptors",
    "RadioWithAdaptorsConfig",
    "RadioWithAdaptorsOutput",
    "Resolution",
]
