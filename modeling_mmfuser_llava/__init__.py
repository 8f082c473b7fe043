"""MMFuser-LLaVA for Hugging Face Transformers (MMFuser, arXiv:2410.11829).

Importing the package registers the model with the Auto classes, and marks the classes so that `save_pretrained`
writes their code next to the weights (loadable with `trust_remote_code=True` where this package is not installed).
"""

from . import quiet_bitsandbytes  # noqa: F401  (first: before anything imports bitsandbytes)
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from .configuration_mmfuser_llava import MMFuserLlavaConfig
from .modeling_mmfuser_llava import (
    MMFuserLlavaForConditionalGeneration,
    MMFuserLlavaModel,
    MMFuserLlavaPreTrainedModel,
)

AutoConfig.register(MMFuserLlavaConfig.model_type, MMFuserLlavaConfig)
AutoModel.register(MMFuserLlavaConfig, MMFuserLlavaModel)
AutoModelForImageTextToText.register(MMFuserLlavaConfig, MMFuserLlavaForConditionalGeneration)
MMFuserLlavaConfig.register_for_auto_class("AutoConfig")
MMFuserLlavaModel.register_for_auto_class("AutoModel")
MMFuserLlavaForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = [
    "MMFuserLlavaConfig",
    "MMFuserLlavaForConditionalGeneration",
    "MMFuserLlavaModel",
    "MMFuserLlavaPreTrainedModel",
]
