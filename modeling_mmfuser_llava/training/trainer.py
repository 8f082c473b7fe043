"""`transformers.Trainer` with the changes MMFuser training needs, each a documented Trainer override point.

- `create_accelerator_and_postprocess`: FSDP on CPU processes too, one `engine: ...` line naming the engine that runs,
  and an error when it is not the one requested (see `engines`).
- `compute_loss`: a batch without images gives the vision side zero gradients, as the original's zero image does.
- `create_optimizer`: the fuser's parameters get their own learning rate (`--ms_cross_attn_lr`, the 13B stage 1).
- `_get_train_sampler`: LLaVA's `--group_by_modality_length` order.
- `_save` / `_load_from_checkpoint`: in stage 1 a checkpoint and the final output hold the fuser and projector only
  (one safetensors file, not a copy of the frozen 7B/13B LLM), and resuming reads them back from it; a full save
  under FSDP2 writes the project's model files and `auto_map`, not those of FSDP2's wrapper class.
"""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer

from ..modeling_mmfuser_llava import MMFuserLlavaModel

from .data import ModalityLengthGroupedSampler
from .engines import (
    as_own_class,
    check_engine,
    enable_deepspeed_on_cpu_processes,
    enable_fsdp_on_cpu_processes,
    engine_line,
    requested_engine,
)
from .model_setup import FUSER, MM_PROJECTOR_FILE, in_part, load_mm_adapter, save_mm_adapter


class MMFuserTrainer(Trainer):
    def __init__(self, *args, mm_adapter_only: bool = False, **kwargs):
        """`mm_adapter_only`: stage 1, where only the fuser and projector train and get saved."""
        self.mm_adapter_only = mm_adapter_only
        super().__init__(*args, **kwargs)

    def create_accelerator_and_postprocess(self) -> None:
        requested = requested_engine(self.args)
        super().create_accelerator_and_postprocess()
        enable_fsdp_on_cpu_processes(self.accelerator, requested == "fsdp", self.args.fsdp_plugin_args)
        enable_deepspeed_on_cpu_processes(self.accelerator, self.args.deepspeed_plugin)
        self.is_fsdp_enabled = getattr(self.accelerator.state, "fsdp_plugin", None) is not None
        self.is_deepspeed_enabled = getattr(self.accelerator.state, "deepspeed_plugin", None) is not None
        check_engine(requested, self.accelerator)
        if self.args.process_index == 0:
            print(engine_line(self.accelerator), flush=True)

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch=None):
        """The Trainer's loss; on a training batch without images, the vision side joins it with a zero gradient.

        The original LLaVA encodes a zero image for a text-only sample and splices a zero-length slice of its features
        into the embeddings, so the fuser and projector always get a gradient, zero on such a batch. Without it they
        got none: torch's AdamW skipped them while DeepSpeed's Adam applied zeros (momentum, weight decay), and with
        `--group_by_modality_length` the engines parted after a text-only batch.
        """
        if "pixel_values" in inputs or not (model.training and torch.is_grad_enabled()):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with zero_length_image_features(self.accelerator.unwrap_model(model)):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The Trainer's optimizer; with `ms_cross_attn_lr`, each group's fuser parameters move to a twin group."""
        optimizer = super().create_optimizer(model)
        fuser_lr = self.args.ms_cross_attn_lr
        if fuser_lr is None or any(group.get("fuser_group") for group in optimizer.param_groups):
            return optimizer
        opt_model = self.model if model is None else model
        fuser_ids = {id(p) for name, p in opt_model.named_parameters() if in_part(name, (FUSER,))}
        for group in list(optimizer.param_groups):
            fuser_params = [p for p in group["params"] if id(p) in fuser_ids]
            if fuser_params:
                group["params"] = [p for p in group["params"] if id(p) not in fuser_ids]
                settings = {key: value for key, value in group.items() if key != "params"}
                optimizer.add_param_group({**settings, "params": fuser_params, "lr": fuser_lr, "fuser_group": True})
        optimizer.param_groups[:] = [group for group in optimizer.param_groups if group["params"]]
        return optimizer

    def _get_train_sampler(self, train_dataset=None):
        if not self.args.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return ModalityLengthGroupedSampler(
            dataset.modality_lengths,
            batch_size=self.args.train_batch_size,
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            seed=self.args.seed,
        )

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.mm_adapter_only:
            with as_own_class(self.accelerator.unwrap_model(self.model, keep_torch_compile=False)):
                return super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        output_dir = Path(output_dir if output_dir is not None else self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        save_mm_adapter(state_dict if state_dict is not None else model.state_dict(), output_dir / MM_PROJECTOR_FILE)
        model.config.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        adapter_file = Path(resume_from_checkpoint) / MM_PROJECTOR_FILE
        if self.mm_adapter_only and adapter_file.is_file():
            load_mm_adapter(self.model if model is None else model, adapter_file)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)


@contextlib.contextmanager
def zero_length_image_features(model: nn.Module) -> Iterator[None]:
    """While it is open, a forward without images encodes one zero image and adds a zero-length slice of its
    features (a sum of nothing: zero, with a zero gradient) to the language model's input embeddings.

    Done inside the model's forward, from a hook on its language model, so that every engine sees it as part of the
    forward: DDP's reducer, FSDP2's unsharding and ZeRO-3's gathering. Nothing happens when no vision-side parameter
    trains (LoRA with a frozen fuser and projector).
    """
    vision_language = next(module for module in model.modules() if isinstance(module, MMFuserLlavaModel))
    vision_side = (vision_language.vision_tower, vision_language.fuser, vision_language.multi_modal_projector)
    if not any(parameter.requires_grad for part in vision_side for parameter in part.parameters()):
        yield
        return

    def splice_zero_length_features(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        embeddings = kwargs["inputs_embeds"]
        size = vision_language.config.vision_config.image_size
        zero_image = torch.zeros(1, 3, size, size, dtype=embeddings.dtype, device=embeddings.device)
        features = vision_language.get_image_features(pixel_values=zero_image, return_dict=True).pooler_output[0]
        return args, {**kwargs, "inputs_embeds": embeddings + features[:0].sum().to(embeddings.dtype)}

    handle = vision_language.language_model.register_forward_pre_hook(splice_zero_length_features, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


__all__ = ["MMFuserTrainer", "zero_length_image_features"]
