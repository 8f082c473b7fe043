"""One training run, stage 1 or stage 2, full or LoRA/QLoRA: what `mmfuser-llava train` does, callable from Python.

Runs unchanged on one process or several (`torchrun`, `accelerate launch`, `deepspeed`): the Trainer sets up the
process group (gloo on CPU, NCCL on GPUs), shards batches and saves from the main process.
"""

import logging
from pathlib import Path

import torch
from transformers import set_seed

from .arguments import DataArguments, ModelArguments, TrainingArguments, check_argument_combinations
from .checkpoints import incomplete_reason, last_complete_checkpoint
from .engines import init_deepspeed_communication
from .hub_data import build_training_dataset, training_collator
from .lora import add_lora_adapters, write_base_model_record
from .model_setup import (
    format_parameter_counts,
    load_mm_adapter,
    load_model_and_processor,
    parameter_counts,
    set_trainable_parts,
)
from .trainer import MMFuserTrainer

logger = logging.getLogger(__name__)


def training_dtype(training_args: TrainingArguments) -> torch.dtype:
    """Weights are loaded in the mixed-precision dtype, as the original did (DeepSpeed keeps float32 masters)."""
    return torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32


def checkpoint_to_resume(training_args: TrainingArguments) -> str | None:
    """`--resume_from_checkpoint` (an error if incomplete), else the newest complete `checkpoint-*` in the output
    folder (the original took the newest, complete or not); logs which, and why it skipped newer ones."""
    if training_args.resume_from_checkpoint is not None:
        reason = incomplete_reason(Path(training_args.resume_from_checkpoint))
        if reason is not None:
            raise ValueError(f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: {reason}")
        return training_args.resume_from_checkpoint
    last = last_complete_checkpoint(Path(training_args.output_dir))
    if last is not None:
        logger.warning("resuming from %s (the newest complete checkpoint in the output folder)", last)
    return None if last is None else str(last)


def run_training(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
) -> MMFuserTrainer:
    """Build the model and data, train, and save; returns the Trainer (its `state.log_history` holds the losses).

    Output: stage 1 writes `mm_projector.safetensors` (fuser + projector) and the config; stage 2 a full
    trust_remote_code checkpoint with its processor; LoRA the adapter folder (with the fuser and projector), ready for
    `mmfuser-llava merge-lora`.
    """
    check_argument_combinations(model_args, training_args)
    set_seed(training_args.seed)  # before the fuser and projector are initialised
    quantization = None
    if training_args.bits < 16:
        quantization = dict(bits=training_args.bits, quant_type=training_args.quant_type,
                            double_quant=training_args.double_quant)
    init_deepspeed_communication(training_args)
    model, processor = load_model_and_processor(
        model_args, training_dtype(training_args), quantization, device=training_args.device
    )
    processor.tokenizer.model_max_length = training_args.model_max_length
    processor.image_processor.do_pad = data_args.image_aspect_ratio == "pad"
    if model_args.pretrain_mm_mlp_adapter is not None:
        load_mm_adapter(model, model_args.pretrain_mm_mlp_adapter)
    if training_args.lora_enable:
        model = add_lora_adapters(model, training_args)
    else:
        set_trainable_parts(
            model,
            tune_mm_mlp_adapter=model_args.tune_mm_mlp_adapter,
            freeze_backbone=model_args.freeze_backbone,
            freeze_mm_mlp_adapter=training_args.freeze_mm_mlp_adapter,
            unfreeze_vision_tower=model_args.unfreeze_vision_tower,
        )
    if training_args.process_index == 0:
        print(f"Parameters per part:\n{format_parameter_counts(parameter_counts(model))}", flush=True)
    with training_args.main_process_first(desc="checking the training data (and building its Arrow cache)"):
        dataset = build_training_dataset(
            data_args, processor, model.config.image_seq_length, training_args, model_args.version
        )
    trainer = MMFuserTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=training_collator(dataset, processor.tokenizer.pad_token_id),
        processing_class=processor,
        mm_adapter_only=model_args.tune_mm_mlp_adapter,
    )
    trainer.train(resume_from_checkpoint=checkpoint_to_resume(training_args))
    trainer.save_state()
    # The Trainer turns the cache off for training, and a base LLM saved by a Trainer carries that into the text
    # config and the generation config: the saved model generates with it.
    for config in (model.config, model.config.get_text_config(), model.generation_config):
        config.use_cache = True
    trainer.save_model()
    if training_args.lora_enable and training_args.should_save:
        write_base_model_record(training_args.output_dir, model_args)
    return trainer


__all__ = ["checkpoint_to_resume", "run_training", "training_dtype"]
