"""Write a model and its processor as a Hub repo folder that loads with `trust_remote_code=True`, all or nothing."""

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers import PreTrainedModel, ProcessorMixin


def current_umask() -> int:
    """The process's umask (POSIX offers no way to read it but to set it: set and restore at once)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def follow_umask(folder: Path) -> None:
    """Give `folder` and everything in it the mode a fresh `mkdir`/`open` would: rwx (folders, executables) or rw
    (files) less the umask, as if the user had written them (a staging folder is private, a copied file keeps its
    source's mode)."""
    umask = current_umask()
    folder.chmod(0o777 & ~umask)
    for root, folders, files in os.walk(folder):
        for name in folders:
            if not (Path(root) / name).is_symlink():
                (Path(root) / name).chmod(0o777 & ~umask)
        for name in files:
            path = Path(root) / name
            if not path.is_symlink():
                path.chmod((0o777 if path.stat().st_mode & 0o111 else 0o666) & ~umask)


@contextmanager
def staged_output(output_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside `output_dir`, moved into place only if the block finishes.

    An error or an interrupt leaves `output_dir` as it was (absent, or the old contents); an existing non-empty
    `output_dir` is refused unless `overwrite` is set. Replacing moves the old folder aside, moves the new one in, then
    deletes the old one: an interrupt at any step leaves one complete `output_dir` (the old one put back if the new
    one is not in place yet). The output's folders and files get the modes the user's umask gives new files.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty: pass overwrite=True (--overwrite) to replace it")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    replaced = staging.with_name(staging.name.replace(".partial-", ".replaced-", 1))
    try:
        yield staging
        follow_umask(staging)
        if output_dir.exists():
            os.replace(output_dir, replaced)
        os.replace(staging, output_dir)
    finally:
        if replaced.exists() and not output_dir.exists():
            os.replace(replaced, output_dir)  # stopped between the two moves: the old folder goes back
        shutil.rmtree(replaced, ignore_errors=True)
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
