"""Read a (sharded) checkpoint one tensor at a time, never holding the model in memory.

Both weight formats are memory-mapped: safetensors through `safe_open`, `.bin` through
`torch.load(mmap=True, weights_only=True)` (no arbitrary unpickling). A mapped page stays resident, and counts in the
process's RSS, for as long as its file is mapped once it has been read. The reader therefore unmaps its files
whenever `release_bytes` have been read and maps them again on the next request, so the source's share of resident
memory stays below `release_bytes` whatever the shard or tensor size (large tensors are copied in blocks of rows).
Files stay mapped until then, so that reading shards in any order does not re-open (for `.bin`, re-unpickle) a file
per tensor.
"""

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .errors import ConversionError

# (index file, single-file name) per format, in order of preference: safetensors first.
WEIGHT_LAYOUTS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
DEFAULT_RELEASE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it is, read from the file's header without touching its data."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * self.dtype.itemsize


def find_weight_files(folder: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files of `folder` and its index's weight map (None without an index); missing files are an error."""
    for index_name, single_name in WEIGHT_LAYOUTS:
        index_path = folder / index_name
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ConversionError(f"{index_path} is not a valid weight index: {error!r}") from None
            files = sorted({folder / name for name in weight_map.values()})
            missing = [file.name for file in files if not file.is_file()]
            if missing:
                raise ConversionError(f"{index_path.name} names shard files that are missing from {folder}: {missing}")
            return files, weight_map
        if (folder / single_name).is_file():
            return [folder / single_name], None
    expected = ", ".join(name for layout in WEIGHT_LAYOUTS for name in layout)
    raise ConversionError(f"no weights found in {folder}: expected one of {expected}")


def _open(file: Path):
    """A mapping of the file: a `safe_open` handle or the dict of mapped tensors of a `.bin`."""
    try:
        if file.suffix == ".safetensors":
            return safe_open(str(file), framework="pt")
        return torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError:
        raise ConversionError(
            f"{file} cannot be loaded as tensors only: it pickles other objects (refused: unpickling them could run "
            "code from the file) or is corrupt"
        ) from None
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as error:
        raise ConversionError(f"cannot read {file}: {error}") from None


def _mapped_tensor(handle, file: Path, name: str) -> torch.Tensor:
    tensor = handle.get_tensor(name) if file.suffix == ".safetensors" else handle[name]
    if not isinstance(tensor, torch.Tensor):
        raise ConversionError(f"{file} holds a {type(tensor).__name__} under {name!r}, not a tensor")
    return tensor


class CheckpointReader:
    """The tensors of a checkpoint folder, read lazily; `tensors` maps every name to its `TensorInfo`."""

    def __init__(self, folder: str | Path, release_bytes: int = DEFAULT_RELEASE_BYTES):
        self.folder = Path(folder)
        self.release_bytes = release_bytes
        self.files, weight_map = find_weight_files(self.folder)
        self.tensors = self._scan(weight_map)
        self._handles: dict[Path, object] = {}
        self._bytes_since_release = 0

    def _scan(self, weight_map: dict[str, str] | None) -> dict[str, TensorInfo]:
        """Read every file's header (shapes, dtypes): a corrupt or inconsistent file is an error before any writing."""
        tensors: dict[str, TensorInfo] = {}
        for file in self.files:
            handle = _open(file)
            for name in sorted(handle.keys()):
                if name in tensors:
                    raise ConversionError(f"{name!r} is stored twice: in {tensors[name].file.name} and {file.name}")
                tensor = _mapped_tensor(handle, file, name)
                tensors[name] = TensorInfo(name, tuple(tensor.shape), tensor.dtype, file)
            del handle
        if weight_map is not None:
            disagreeing = sorted(
                {name for name, file in weight_map.items() if name not in tensors or tensors[name].file.name != file}
                | {name for name in tensors if name not in weight_map}
            )
            if disagreeing:
                raise ConversionError(
                    f"the weight index of {self.folder} disagrees with its shard files about {len(disagreeing)} "
                    f"tensors: {disagreeing[:20]}"
                )
        return tensors

    def copy_into(self, name: str, out: torch.Tensor) -> None:
        """Copy the named tensor into `out` (same shape, any dtype: values are cast), block of rows by block of rows.

        Each block is at most `release_bytes` (one row if a row is larger), and the files are unmapped whenever that
        much has been read, so even a tensor larger than the budget never has more than the budget mapped.
        """
        info = self.tensors[name]
        if tuple(out.shape) != info.shape:
            raise ValueError(f"{name} has shape {info.shape}, cannot copy it into {tuple(out.shape)}")
        out_rows = out if out.dim() else out.view(1)  # a scalar is one row
        row_bytes = max(1, info.nbytes // max(1, out_rows.shape[0]))
        rows_per_block = max(1, self.release_bytes // row_bytes)
        for start in range(0, out_rows.shape[0], rows_per_block):
            rows = out_rows[start : start + rows_per_block]
            if self._bytes_since_release + len(rows) * row_bytes > self.release_bytes:
                self.close()
            if info.file not in self._handles:
                self._handles[info.file] = _open(info.file)
            source = _mapped_tensor(self._handles[info.file], info.file, name)
            rows.copy_((source if source.dim() else source.view(1))[start : start + len(rows)])
            self._bytes_since_release += len(rows) * row_bytes

    def close(self) -> None:
        """Unmap every file: their pages stop counting in RSS."""
        self._handles.clear()
        self._bytes_since_release = 0


__all__ = ["CheckpointReader", "TensorInfo", "find_weight_files"]
