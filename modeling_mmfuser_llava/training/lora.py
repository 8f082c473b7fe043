"""LoRA / QLoRA with peft: adapters on the language model's linear layers only; fuser and projector trained in full.

The fuser and projector are peft `modules_to_save`, so the adapter folder carries them and `merge_lora` gets them
back. The LoRA targets are anchored under `model.language_model`: adapters never leak into the vision tower, the
fuser, the projector or `lm_head` (LLaVA's helper matched linear layers by base name anywhere).
"""

import dataclasses
import json
import re
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch import nn
from transformers import AutoProcessor

from ..hub_folder import save_hub_folder
from .arguments import ModelArguments, TrainingArguments
from .model_setup import LANGUAGE_MODEL, MM_ADAPTER_PARTS, load_model_and_processor

BASE_MODEL_FILE = "mmfuser_base_model.json"  # the ModelArguments that built the base, for merge_lora


def language_model_target_regex(model: nn.Module) -> str:
    """A peft `target_modules` regex for every linear layer under `model.language_model`, by their base names."""
    names = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if name.startswith(f"{LANGUAGE_MODEL}.") and isinstance(module, nn.Linear)
        }
    )
    if not names:
        raise ValueError(f"no linear layer under {LANGUAGE_MODEL}: nothing for LoRA to adapt")
    return rf"{re.escape(LANGUAGE_MODEL)}\..*\.({'|'.join(map(re.escape, names))})"


def add_lora_adapters(model: nn.Module, training_args: TrainingArguments) -> PeftModel:
    """Wrap `model` with LoRA adapters (after readying a quantized base for training, as QLoRA does)."""
    if getattr(model, "is_quantized", False):
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=training_args.activation_checkpointing,
            gradient_checkpointing_kwargs=training_args.activation_checkpointing_kwargs,
        )
    config = LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        lora_dropout=training_args.lora_dropout,
        bias=training_args.lora_bias,
        target_modules=language_model_target_regex(model),
        modules_to_save=list(MM_ADAPTER_PARTS),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    if training_args.freeze_mm_mlp_adapter:  # still saved with the adapter, so that merging finds them
        for name, parameter in peft_model.named_parameters():
            if any(f"{part}." in name for part in MM_ADAPTER_PARTS):
                parameter.requires_grad_(False)
    return peft_model


def write_base_model_record(output_dir: str | Path, model_args: ModelArguments) -> Path:
    """Record how the base model was built, so that `merge_lora` can rebuild it without being told."""
    path = Path(output_dir) / BASE_MODEL_FILE
    path.write_text(json.dumps(dataclasses.asdict(model_args), indent=2) + "\n")
    return path


def merge_lora(
    adapter_dir: str | Path,
    output_dir: str | Path,
    base_model: str | None = None,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
) -> Path:
    """Fold a LoRA run's adapters (and its fuser and projector) into its base: a full trust_remote_code checkpoint.

    The base is rebuilt unquantized from the run's record (or from `base_model`, an MMFuser-LLaVA checkpoint); a
    QLoRA run's adapters are merged into that full-precision base.
    """
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} holds no adapter_config.json: not a LoRA training output")
    record = adapter_dir / BASE_MODEL_FILE
    if base_model is not None:
        model_args = ModelArguments(model_name_or_path=base_model)
    elif record.is_file():
        model_args = ModelArguments(**json.loads(record.read_text()))
    else:
        raise FileNotFoundError(f"{adapter_dir} has no {BASE_MODEL_FILE}: name the base model")
    model_args = dataclasses.replace(model_args, pretrain_mm_mlp_adapter=None, attn_implementation=None)
    base, _ = load_model_and_processor(model_args, dtype=dtype)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    processor = AutoProcessor.from_pretrained(adapter_dir)
    return save_hub_folder(merged, processor, output_dir, overwrite=overwrite)


__all__ = [
    "BASE_MODEL_FILE",
    "add_lora_adapters",
    "language_model_target_regex",
    "merge_lora",
    "write_base_model_record",
]
