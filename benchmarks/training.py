"""(f) a stage-2 training step of MMFuser-LLaVA against plain LLaVA-1.5, and the fuser's own forward + backward.

Stage 2 as the paper trains it: the vision tower frozen; fuser, projector and language model trained. A small
language model (SMALL_LM's width, 2 layers) keeps the step short, so the fuser's share is large: the hard case.
"""

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import LlavaForConditionalGeneration

from modeling_mmfuser_llava import MMFuserLlavaForConditionalGeneration
from modeling_mmfuser_llava.conversion.upcycle import share_llava_parts
from modeling_mmfuser_llava.fuser import MMFuserBlock

from .configs import REAL, Sizes, model_configs, setting_name
from .fuser import clip_l336_fuser, fuser_inputs
from .generation import prompt_inputs
from .timing import Result, interleaved_times

TEXT_TOKENS = 63  # + BOS + 576 image tokens = 640 tokens per sequence


def stage_two_models(
    seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu", sizes: Sizes = REAL
) -> tuple[MMFuserLlavaForConditionalGeneration, LlavaForConditionalGeneration]:
    """MMFuser-LLaVA (open gates, real offsets; a 2-layer small Llama) and a plain Llava sharing its tower, projector
    and language model, with the tower frozen as in stage 2."""
    mmfuser_config, llava_config = model_configs(sizes, **{**sizes.small_lm, "num_hidden_layers": 2})
    torch.manual_seed(seed)
    mmfuser = MMFuserLlavaForConditionalGeneration(mmfuser_config)
    mmfuser.model.fuser = clip_l336_fuser(torch.float32, seed, sizes)
    with torch.device("meta"):
        plain = LlavaForConditionalGeneration(llava_config)
    share_llava_parts(mmfuser, plain)
    mmfuser.model.vision_tower.requires_grad_(False)
    return mmfuser.to(device, dtype).train(), plain.to(device, dtype).train()


def training_inputs(
    batch: int, dtype: torch.dtype = torch.float32, device: str = "cpu", sizes: Sizes = REAL
) -> dict[str, torch.Tensor]:
    inputs = prompt_inputs(batch, dtype, TEXT_TOKENS, device, sizes)
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == model_configs()[0].image_token_id, -100)
    return {**inputs, "labels": labels}


def training_step(model, inputs: dict[str, torch.Tensor]) -> None:
    model(**inputs).loss.backward()
    model.zero_grad(set_to_none=True)


def fuser_forward_backward(fuser: MMFuserBlock, query: torch.Tensor, keys_values: list[torch.Tensor]) -> None:
    fuser(query, keys_values).sum().backward()
    fuser.zero_grad(set_to_none=True)


def linear_layers_forward_backward(fuser: MMFuserBlock, query: torch.Tensor, keys_values: list[torch.Tensor]) -> None:
    """Every Linear of the block, forward and backward (input and weight gradients), on inputs of its shapes."""
    keys_values = torch.cat(keys_values, 1).requires_grad_()
    query = query.detach().requires_grad_()
    outputs = []
    for attention, values_input in ((fuser.cross_attn, keys_values), (fuser.self_attn, query)):
        outputs += [attention.value_proj(values_input), attention.sampling_offsets(query)]
        outputs += [attention.attention_weights(query), attention.output_proj(query)]
    torch.autograd.backward([output.sum() for output in outputs])
    fuser.zero_grad(set_to_none=True)


class AllocationLog(TorchDispatchMode):
    """Every storage an op creates while the mode is on: its bytes, and the order of creations and frees."""

    def __init__(self):
        super().__init__()
        self.events: list[tuple[int, int]] = []  # (storage address, +bytes when created / -bytes when freed)
        self.live: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(output):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in self.live:
                storage = tensor.untyped_storage()
                address, size = storage.data_ptr(), storage.nbytes()
                if address and size:
                    self.live[address] = size
                    self.events.append((address, size))
                    weakref.finalize(storage, self.free, address)
        return output

    def free(self, address: int) -> None:
        if address in self.live:
            self.events.append((address, -self.live.pop(address)))

    def peak_bytes(self, excluded: set[int]) -> int:
        """The highest total of live storages over the log, leaving out the storages at `excluded` addresses."""
        total = peak = 0
        for address, change in self.events:
            if address not in excluded:
                total += change
                peak = max(peak, total)
        return peak


def peak_activation_bytes(model, inputs: dict[str, torch.Tensor]) -> int:
    """Peak bytes of the storages a training step creates, but the parameters' gradients: its activation memory
    (with temporaries), as an allocator sees it."""
    with AllocationLog() as log:
        model(**inputs).loss.backward()
        gradients = {parameter.grad.untyped_storage().data_ptr() for parameter in model.parameters()
                     if parameter.grad is not None}
    model.zero_grad(set_to_none=True)
    return log.peak_bytes(gradients)


def measure_training(
    batch: int, rounds: int, dtype: torch.dtype = torch.float32, device: str = "cpu", sizes: Sizes = REAL,
    checkpointing: bool = False,
) -> list[Result]:
    """The training step of stage 2 against plain Llava's, timed directly (with activation checkpointing in both
    where `checkpointing`)."""
    mmfuser, plain = stage_two_models(dtype=dtype, device=device, sizes=sizes)
    if checkpointing:
        for model in (mmfuser, plain):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    inputs = training_inputs(batch, dtype, device, sizes)
    times = interleaved_times(
        {"mmfuser": lambda: training_step(mmfuser, inputs), "plain": lambda: training_step(plain, inputs)}, rounds
    )
    details = [f"batch {batch}", f"{inputs['input_ids'].shape[1]} tokens", "2-layer Llama"]
    setting = setting_name(dtype, device, *details, *(["activation checkpointing"] if checkpointing else []))
    return [
        times.result("(f) training step (stage 2), MMFuser / plain Llava, direct", setting, "mmfuser", "plain",
                     "<= 1.10"),
    ]


def measure_fuser_training(batch: int, rounds: int) -> list[Result]:
    """The fuser's forward + backward, as in a training step, against its Linears' forward + backward."""
    fuser = clip_l336_fuser(torch.float32).train()
    query, keys_values = fuser_inputs(fuser, batch, torch.float32)
    times = interleaved_times(
        {
            "fuser": lambda: fuser_forward_backward(fuser, query, keys_values),
            "linears": lambda: linear_layers_forward_backward(fuser, query, keys_values),
        },
        rounds,
    )
    return [
        times.result("(f) fuser forward+backward / its linear layers' forward+backward", f"float32, batch {batch}",
                     "fuser", "linears", "<= 2.0"),
    ]


def measure_activation_memory(batch: int) -> list[Result]:
    """Peak activation memory of the step of `measure_training`, without and with gradient checkpointing."""
    mmfuser, plain = stage_two_models()
    inputs = training_inputs(batch)
    setting = f"float32, batch {batch}, {inputs['input_ids'].shape[1]} tokens, 2-layer Llama"
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            for model in (mmfuser, plain):
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        ours, baseline = peak_activation_bytes(mmfuser, inputs), peak_activation_bytes(plain, inputs)
        mib = 2**20
        results.append(
            Result(
                "(f) peak activation memory of the step, MMFuser / plain Llava"
                + (", gradient checkpointing" if checkpointing else ""),
                setting, f"{ours / mib:.0f} MiB", f"{baseline / mib:.0f} MiB", ours / baseline, target="<= 1.10",
            )
        )
    return results
