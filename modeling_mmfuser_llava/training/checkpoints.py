"""Checkpoints and outputs that a kill, a preemption or a full disk cannot leave half-written under their final name.

transformers' Trainer writes a checkpoint in place: a run killed during a save left `checkpoint-N` with a truncated
`model.safetensors` and no `trainer_state.json`, and the next run of the same command resumed from it and stopped with
`SafetensorError: ... invalid header length`. Here every process writes its part under `STAGING_DIR` in the output
folder (the same filesystem), and the main process renames the complete folder once all have written. Resuming takes
the newest checkpoint that passes `incomplete_reason` and says why it skipped any other.
"""

import contextlib
import json
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path

from safetensors import safe_open
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

# Under the output folder; a leading "_" keeps it out of the Trainer's Hub uploads, and it never matches checkpoint-*.
STAGING_DIR = "_incomplete"
CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class SaveError(RuntimeError):
    """A save that could not finish (a full disk, a write error): names the folder and what was left intact."""


def staging_folder(final: Path) -> Path:
    """Where `final` (a checkpoint in an output folder, or the output folder itself) is written before its rename."""
    if CHECKPOINT_NAME.match(final.name):
        return final.parent / STAGING_DIR / final.name
    return final / STAGING_DIR / "output"


def clear_staging(staged: Path) -> None:
    """Remove what an earlier, interrupted save left in `staged`."""
    if staged.exists():
        logger.warning("removing %s, left by a save that did not finish", staged)
        shutil.rmtree(staged)


def remove_staging(staged: Path) -> None:
    """Remove `staged` and the staging folder above it once nothing else is staged there."""
    shutil.rmtree(staged, ignore_errors=True)
    with contextlib.suppress(OSError):  # another save's folder is still in it
        staged.parent.rmdir()


def sync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder`, so that a rename after it publishes data that is on the disk."""
    for path in sorted(folder.rglob("*"), reverse=True) + [folder]:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def publish_folder(staged: Path, final: Path) -> None:
    """Rename the complete `staged` folder to `final`, replacing a folder of that name (an earlier run's)."""
    sync_tree(staged)
    if final.exists():
        replaced = staged.with_name(f"{staged.name}.replaced")
        shutil.rmtree(replaced, ignore_errors=True)
        final.rename(replaced)
        shutil.rmtree(replaced)
    staged.rename(final)
    remove_staging(staged)
    sync_tree(final.parent)


def publish_contents(staged: Path, final: Path) -> None:
    """Move each entry of the complete `staged` folder into `final` (the output folder, which holds the checkpoints
    too, so it cannot be renamed whole): each file appears complete, the set within a few renames."""
    sync_tree(staged)
    for entry in sorted(staged.iterdir()):
        target = final / entry.name
        if entry.is_dir() and target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    remove_staging(staged)
    sync_tree(final)


def save_error(final: Path, error: BaseException, intact: Path | None) -> SaveError:
    left = f"{intact} is intact" if intact is not None else "no earlier checkpoint exists"
    return SaveError(
        f"could not write {final}: {type(error).__name__}: {error}. Nothing was written under that name and {left}; "
        f"free space on the disk of {final} (or lower --save_total_limit) and run the same command again to resume."
    )


def incomplete_reason(checkpoint: Path) -> str | None:
    """None for a complete checkpoint, else why it is not: a missing or unreadable trainer state (the Trainer writes
    it last), a truncated safetensors file, or a truncated torch file (a zip archive without its directory)."""
    state_file = checkpoint / "trainer_state.json"
    if not state_file.is_file():
        return "no trainer_state.json (its save did not finish)"
    try:
        TrainerState.load_from_json(str(state_file))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as error:
        return f"unreadable trainer_state.json ({error})"
    for path in sorted(checkpoint.rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as error:  # safetensors raises its own SafetensorError, which is no OSError
            return f"{path.relative_to(checkpoint)} is truncated or corrupt ({error})"
    for pattern in ("*.pt", "*.pth", "*.bin"):
        for path in sorted(checkpoint.rglob(pattern)):
            if not zipfile.is_zipfile(path):
                return f"{path.relative_to(checkpoint)} is truncated or corrupt (not a complete torch file)"
    return None


def checkpoints_newest_first(output_dir: Path) -> list[Path]:
    found = [path for path in output_dir.iterdir() if CHECKPOINT_NAME.match(path.name) and path.is_dir()]
    return sorted(found, key=lambda path: int(CHECKPOINT_NAME.match(path.name).group(1)), reverse=True)


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete `checkpoint-N` in `output_dir`; logs each newer one skipped and why."""
    if not output_dir.is_dir():
        return None
    for checkpoint in checkpoints_newest_first(output_dir):
        reason = incomplete_reason(checkpoint)
        if reason is None:
            return checkpoint
        logger.warning("skipping %s: %s", checkpoint, reason)
    return None


__all__ = [
    "STAGING_DIR",
    "SaveError",
    "clear_staging",
    "incomplete_reason",
    "last_complete_checkpoint",
    "publish_contents",
    "publish_folder",
    "remove_staging",
    "save_error",
    "staging_folder",
]
