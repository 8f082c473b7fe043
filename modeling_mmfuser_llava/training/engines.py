"""Which distributed engine a run asked for and which one really runs: DDP, DeepSpeed ZeRO-2/3 or FSDP2.

accelerate falls back to another engine without a word in some setups (FSDP and DeepSpeed on CPU processes); the
Trainer setup here turns them on there too, names the engine that runs in one `engine: ...` line, and stops when it
is not the one requested.
"""

import contextlib
import os
from collections.abc import Iterator

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from torch import nn

from .arguments import TrainingArguments


def requested_engine(args: TrainingArguments) -> str | None:
    """"deepspeed" or "fsdp" when the arguments or an `accelerate launch` config ask for one, else None."""
    if args.deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return None


def running_engine(accelerator: Accelerator) -> str:
    """`ddp`, `deepspeed-zero<stage>`, `fsdp<version>`, or `single-process`: what accelerate set up."""
    state = accelerator.state
    if state.distributed_type == DistributedType.DEEPSPEED:
        return f"deepspeed-zero{state.deepspeed_plugin.zero_stage}"
    if state.distributed_type == DistributedType.FSDP:
        return f"fsdp{state.fsdp_plugin.fsdp_version}"
    return "ddp" if state.num_processes > 1 else "single-process"


def engine_line(accelerator: Accelerator) -> str:
    """`engine: fsdp2 (2 processes, backend gloo)`."""
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
    processes = accelerator.num_processes
    return f"engine: {running_engine(accelerator)} ({processes} process{'es' * (processes > 1)}, backend {backend})"


def check_engine(requested: str | None, accelerator: Accelerator) -> None:
    """Asking for DeepSpeed or FSDP and getting something else is an error, not a silent fallback; so is a launch of
    several processes that accelerate did not join (on CPUs without `--use_cpu True`, each trains alone)."""
    running = running_engine(accelerator)
    if requested is not None and not running.startswith(requested):
        raise RuntimeError(f"{requested} was requested but the run would use {running}")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise RuntimeError(f"{launched} processes were launched but accelerate joined {accelerator.num_processes}: on "
                           "CPUs pass --use_cpu True")


def init_deepspeed_communication(args: TrainingArguments) -> None:
    """DeepSpeed's communication layer over the process group accelerate set up, before the model is loaded.

    ZeRO-3 partitions the weights as `from_pretrained` loads them (`zero.Init`), through `deepspeed.comm`; accelerate
    initialises it only on accelerator devices, so on CPU processes `zero.Init` saw a world of one process.
    """
    if not args.deepspeed:
        return
    import deepspeed

    args.device  # noqa: B018  (sets up accelerate's process group: gloo on CPUs, NCCL on GPUs)
    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend(), auto_mpi_discovery=False)


def enable_deepspeed_on_cpu_processes(accelerator: Accelerator, deepspeed_plugin: DeepSpeedPlugin | None) -> None:
    """Turn a multi-CPU-process run into the DeepSpeed run it was asked to be.

    accelerate chooses DeepSpeed only when not `cpu` (`AcceleratorState`), yet on a machine without accelerators the
    processes join only with `--use_cpu True`. DeepSpeed runs on CPUs (its CPU accelerator, gloo): this does what
    `AcceleratorState` does for DeepSpeed on GPUs.
    """
    state = accelerator.state
    if deepspeed_plugin is None or state.distributed_type != DistributedType.MULTI_CPU:
        return
    deepspeed_plugin.set_mixed_precision(state.mixed_precision)
    deepspeed_plugin.select(_from_accelerator_state=True)
    state.deepspeed_plugins = deepspeed_plugin
    state._mixed_precision = "no"  # DeepSpeed's config handles precision
    state.distributed_type = DistributedType.DEEPSPEED
    PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED
    accelerator.native_amp = False


def enable_fsdp_on_cpu_processes(accelerator: Accelerator, requested_fsdp: bool, plugin_arguments: dict | None) -> None:
    """Turn a multi-CPU-process run into the FSDP run it was asked to be.

    accelerate's `AcceleratorState` switches to FSDP only for accelerator device types (CUDA, XPU, NPU, ...), so on
    CPU processes `--fsdp` silently gives DDP. torch's FSDP2 (`fully_shard`) works over gloo, and accelerate's FSDP2
    preparation has nothing device-specific: setting the distributed type and plugin, as `AcceleratorState` does on
    GPUs, is all that is missing.
    """
    state = accelerator.state
    if not requested_fsdp or state.distributed_type != DistributedType.MULTI_CPU:
        return
    # The Trainer's `--fsdp_config`, else `accelerate launch --config_file`'s settings (FSDP_* variables).
    plugin = FullyShardedDataParallelPlugin(**(plugin_arguments or {}))
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def model_class_of(model: nn.Module) -> type[nn.Module]:
    """The model's own class: FSDP2's `fully_shard` swaps it for a dynamic subclass `FSDP<Name>`."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(model)
    if issubclass(cls, FSDPModule):
        return next(base for base in cls.__mro__[1:] if not issubclass(base, FSDPModule))
    return cls


@contextlib.contextmanager
def as_own_class(model: nn.Module) -> Iterator[nn.Module]:
    """The model seen as its own class while saving: `save_pretrained` writes `auto_map` and copies the code files
    of `type(model)`, which under FSDP2 is torch's `FSDP<Name>` in `_fsdp_init.py`, not the project's model files."""
    sharded_class = type(model)
    model.__class__ = model_class_of(model)
    try:
        yield model
    finally:
        model.__class__ = sharded_class


__all__ = [
    "as_own_class",
    "check_engine",
    "enable_deepspeed_on_cpu_processes",
    "enable_fsdp_on_cpu_processes",
    "engine_line",
    "init_deepspeed_communication",
    "model_class_of",
    "requested_engine",
    "running_engine",
]
