"""Write a model and its processor as a Hub repo folder that loads with `trust_remote_code=True`, all or nothing."""

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers import PreTrainedModel, ProcessorMixin


@contextmanager
def staged_output(output_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside `output_dir`, moved into place only if the block finishes.

    An error or an interrupt leaves `output_dir` as it was (absent, or the old contents); an existing non-empty
    `output_dir` is refused unless `overwrite` is set.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty: pass overwrite=True (--overwrite) to replace it")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        yield staging
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_hub_folder(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    output_dir: str | Path,
    overwrite: bool = False,
    max_shard_size: str | int = "5GB",
    extra_files: Callable[[Path], None] | None = None,
) -> Path:
    """Save weights (safetensors shards), config with `auto_map`, the model code, processor and generation config.

    `extra_files(folder)` may add more (a model card) before the folder is moved into place.
    """
    with staged_output(output_dir, overwrite) as staging:
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        processor.save_pretrained(staging)
        if extra_files is not None:
            extra_files(staging)
    return Path(output_dir)


__all__ = ["save_hub_folder", "staged_output"]
