"""`transformers.Trainer` with the changes MMFuser training needs, each a documented Trainer override point.

- `create_accelerator_and_postprocess`: FSDP on CPU processes too, one `engine: ...` line naming the engine that runs,
  and an error when it is not the one requested (see `engines`).
- `compute_loss`: a batch without images runs the vision side on a zero image, as the original does: zero gradients
  for the fuser and projector, and the same modules in the same order on every process.
- `create_optimizer`: the fuser's parameters get their own learning rate (`--ms_cross_attn_lr`, the 13B stage 1).
- `_get_train_sampler`: LLaVA's `--group_by_modality_length` order.
- `_save` / `_load_from_checkpoint`: in stage 1 a checkpoint and the final output hold the fuser and projector only
  (one safetensors file, not a copy of the frozen 7B/13B LLM), and resuming reads them back from it; a full save
  under FSDP2 writes the project's model files and `auto_map`, not those of FSDP2's wrapper class; under ZeRO-3 a LoRA
  save holds the frozen fuser and projector too.
- `_save_checkpoint` / `save_model` / `_get_output_dir`: checkpoints and the final output are written under a staging
  folder and renamed once every process has written its part, so a kill or a full disk never leaves a half-written
  one under its final name (see `checkpoints`).
"""

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from safetensors import SafetensorError
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..modeling_mmfuser_llava import MMFuserLlavaModel

from .checkpoints import (
    STAGING_DIR,
    clear_staging,
    last_complete_checkpoint,
    publish_contents,
    publish_folder,
    remove_staging,
    save_error,
    staging_folder,
)
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
    _staging_checkpoint = False  # True while `_save_checkpoint` has the Trainer write under the staging folder

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
        """The Trainer's loss; on a batch without images, the vision side runs on a zero image all the same.

        The original LLaVA encodes a zero image for a text-only sample and splices a zero-length slice of its features
        into the embeddings, so every batch runs the vision side and the fuser and projector always get a gradient,
        zero on such a batch. Without it they got none (torch's AdamW skipped them while DeepSpeed's Adam applied
        momentum and weight decay), and under ZeRO-3 a process holding only text ran other modules than the others,
        which gather each module's weights together, so the run stopped.
        """
        if "pixel_values" in inputs:
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
            model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
            if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
                state_dict = with_frozen_modules_to_save(model, state_dict)
            with as_own_class(model):
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

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint,
                             trial) -> tuple[int, int]:
        """The Trainer's resumed state; resumed from the last step's checkpoint (a run killed during its final save),
        no epoch runs: the Trainer ran one step past `max_steps`, moving the weights and logging a step too many."""
        epochs_trained, steps_trained_in_current_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        if resume_from_checkpoint is not None and self.state.global_step >= max_steps:
            return num_train_epochs, 0
        return epochs_trained, steps_trained_in_current_epoch

    def _get_output_dir(self, trial) -> str:
        """The run folder; while a checkpoint is written, its staging folder (the Trainer writes `checkpoint-N` there)."""
        run_dir = super()._get_output_dir(trial)
        return str(Path(run_dir) / STAGING_DIR) if self._staging_checkpoint else run_dir

    def _save_checkpoint(self, model: nn.Module, trial) -> None:
        """The Trainer's checkpoint, written by every process under the staging folder and renamed once complete;
        old checkpoints are rotated out only then."""
        run_dir = Path(super()._get_output_dir(trial))
        final = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        with self._staged_save(final, publish_folder, checkpoints_dir=run_dir):
            self._staging_checkpoint = True
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging_checkpoint = False
        if self.args.should_save:
            rotate_checkpoints(str(run_dir), self.args.save_total_limit, self.state.best_model_checkpoint,
                               use_mtime=True)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The final output, written under a staging folder and moved into the output folder once complete (a
        checkpoint's model, `_internal_call`, is already staged by `_save_checkpoint`)."""
        if _internal_call:
            return super().save_model(output_dir, _internal_call)
        final = Path(output_dir if output_dir is not None else self.args.output_dir)
        with self._staged_save(final, publish_contents, checkpoints_dir=final) as staged:
            super().save_model(str(staged), _internal_call=True)
        if self.args.push_to_hub:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    @contextlib.contextmanager
    def _staged_save(self, final: Path, publish: Callable[[Path, Path], None], checkpoints_dir: Path) -> Iterator[Path]:
        """Every process writes under `final`'s staging folder while it is open; then the main process publishes it.

        A write error (a full disk) removes what was staged and raises a `SaveError` naming `final` and the newest
        complete checkpoint in `checkpoints_dir`, which stays as it was.
        """
        staged = staging_folder(final)
        if self.args.should_save:
            clear_staging(staged)
        self.accelerator.wait_for_everyone()
        try:
            yield staged
        except (OSError, RuntimeError, SafetensorError) as error:
            if self.args.should_save:
                remove_staging(staged)
            raise save_error(final, error, last_complete_checkpoint(checkpoints_dir)) from error
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            publish(staged, final)
        self.accelerator.wait_for_everyone()


def with_frozen_modules_to_save(model: nn.Module, state_dict: dict | None) -> dict | None:
    """`state_dict` plus a PEFT model's frozen `modules_to_save`, gathered from ZeRO-3's partitions.

    Under ZeRO-3 the Trainer gathers only the trainable weights of a PEFT model, but PEFT's adapter file holds every
    module to save: the fuser and projector, frozen with `--freeze_mm_mlp_adapter` (kept so that merging finds them),
    were missing and the final save stopped with a KeyError. All processes gather (a collective); the main one, whose
    `state_dict` is not None, keeps the weights.
    """
    frozen = {name: parameter for name, parameter in model.named_parameters()
              if ".modules_to_save." in name and not parameter.requires_grad}
    if not frozen:
        return state_dict
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(frozen.values())):
        if state_dict is not None:
            state_dict.update({name: parameter.detach().cpu().clone() for name, parameter in frozen.items()})
    return state_dict


@contextlib.contextmanager
def zero_length_image_features(model: nn.Module) -> Iterator[None]:
    """While it is open, a forward without images encodes one zero image and adds a zero-length slice of its
    features (a sum of nothing: zero, with a zero gradient) to the input embeddings.

    The zero image is encoded where real pictures are: right after the input embeddings, by the same modules in the
    same order (Llava's forward embeds the tokens, then encodes the pictures, then runs the language model). Engines
    that gather each module's weights as it runs (ZeRO-3, FSDP) need every process to run the same modules in the same
    order whatever its batch holds, frozen ones included, and DDP's reducer sees the gradient as part of the forward.
    """
    vision_language = next(module for module in model.modules() if isinstance(module, MMFuserLlavaModel))

    def add_zero_length_features(module: nn.Module, args: tuple, embeddings: torch.Tensor) -> torch.Tensor:
        size = vision_language.config.vision_config.image_size
        zero_image = torch.zeros(1, 3, size, size, dtype=embeddings.dtype, device=embeddings.device)
        features = vision_language.get_image_features(pixel_values=zero_image, return_dict=True).pooler_output[0]
        return embeddings + features[:0].sum().to(embeddings.dtype)

    handle = vision_language.get_input_embeddings().register_forward_hook(add_zero_length_features)
    try:
        yield
    finally:
        handle.remove()


__all__ = ["MMFuserTrainer", "with_frozen_modules_to_save", "zero_length_image_features"]
