"""The non-weight files of a Hub folder, written from a model built on the meta device.

These are what `save_pretrained` writes besides the weights (config with `architectures` and `auto_map`, the model's
code files for `trust_remote_code`, `generation_config.json`), plus the processor: the converter writes the weights
itself, shard by shard, and never materialises the model.
"""

from pathlib import Path

from transformers import PreTrainedModel, ProcessorMixin
from transformers.dynamic_module_utils import custom_object_save


def write_model_files(model: PreTrainedModel, processor: ProcessorMixin, folder: Path) -> None:
    model.config.architectures = [type(model).__name__]
    custom_object_save(model, folder, config=model.config)
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    processor.save_pretrained(folder)


__all__ = ["write_model_files"]
