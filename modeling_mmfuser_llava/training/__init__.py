"""Fine-tuning MMFuser-LLaVA with the Transformers Trainer: the paper's two stages, LoRA/QLoRA, several processes.

Needs the `train` extra (peft, datasets, tensorboard); QLoRA (`--bits 4` or `8`) also the `quantization` extra
(bitsandbytes). Entry points: `run_training` (what `mmfuser-llava train` runs), `merge_lora`, `make_synthetic_dataset`.
"""

from .arguments import DataArguments, ModelArguments, TrainingArguments, parse_arguments
from .lora import merge_lora
from .run import run_training
from .synthetic import make_synthetic_dataset

__all__ = [
    "DataArguments",
    "ModelArguments",
    "TrainingArguments",
    "make_synthetic_dataset",
    "merge_lora",
    "parse_arguments",
    "run_training",
]
