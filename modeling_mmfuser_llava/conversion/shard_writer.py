"""Write tensors produced one at a time as safetensors shards plus index, holding at most one output shard in memory.

The shard plan is made up front from names, shapes and dtypes alone (`split_torch_state_dict_into_shards` on meta
tensors), so file names and the index are known before any data is read; each shard is then filled, written with
`safetensors.torch.save_file` (which writes from the tensors' memory without another copy) and released. The files
match what `save_pretrained` writes: `model.safetensors`, or `model-0000i-of-0000n.safetensors` and
`model.safetensors.index.json`.
"""

import ctypes
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import save_file
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME


def return_freed_memory() -> None:
    """Hand the memory of a written shard back to the OS.

    glibc raises its mmap threshold as large blocks are freed, so later tensors of up to 32 MiB come from its heap,
    which it keeps after they are freed: without this, resident memory creeps up by a fraction of a shard per shard.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: what it will be, and how to produce it (`load()` returns it in `dtype`, in its own memory)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    load: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * self.dtype.itemsize


@dataclass(frozen=True)
class WrittenWeights:
    files: list[str]
    tensors: int
    bytes: int


def write_safetensors_shards(
    tensors: list[PlannedTensor],
    folder: Path,
    max_shard_size: int | str,
    on_tensor: Callable[[PlannedTensor], None] = lambda tensor: None,
) -> WrittenWeights:
    """Write `tensors` (in their order) into shards of at most `max_shard_size`; `on_tensor` follows progress."""
    planned = {tensor.name: tensor for tensor in tensors}
    split = split_torch_state_dict_into_shards(
        {tensor.name: torch.empty(tensor.shape, dtype=tensor.dtype, device="meta") for tensor in tensors},
        filename_pattern=SAFE_WEIGHTS_NAME.replace(".safetensors", "{suffix}.safetensors"),
        max_shard_size=max_shard_size,
    )
    for filename, names in split.filename_to_tensors.items():
        shard = {}
        for name in names:
            tensor = planned[name].load()
            expected = (planned[name].shape, planned[name].dtype)
            if (tuple(tensor.shape), tensor.dtype) != expected:
                loaded = (tuple(tensor.shape), tensor.dtype)
                raise RuntimeError(f"{name} was planned as {expected} but loaded as {loaded}")
            shard[name] = tensor.contiguous()
            on_tensor(planned[name])
        save_file(shard, folder / filename, metadata={"format": "pt"})
        del shard
        return_freed_memory()
    if split.is_sharded:
        total_parameters = sum(torch.Size(tensor.shape).numel() for tensor in tensors)
        index = {
            "metadata": {"total_parameters": total_parameters, **split.metadata},
            "weight_map": split.tensor_to_filename,
        }
        (folder / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return WrittenWeights(
        files=list(split.filename_to_tensors), tensors=len(tensors), bytes=sum(tensor.nbytes for tensor in tensors)
    )


__all__ = ["PlannedTensor", "WrittenWeights", "write_safetensors_shards"]
