"""Checkpoints are named by a local folder or a Hub id; everything downstream works on a local folder."""

from pathlib import Path

from .errors import ConversionError


def resolve_folder(name_or_path: str | Path, allow_patterns: list[str] | None = None) -> Path:
    """`name_or_path` itself if it is a local folder, else the Hub snapshot of that repo id (downloaded if needed).

    `allow_patterns` restricts the download, e.g. to configs and one weight format.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ConversionError(f"{path} is a file; expected a checkpoint folder or a Hub repo id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(str(name_or_path))
    except HFValidationError as error:
        raise ConversionError(f"{name_or_path} is neither a local folder nor a valid Hub repo id: {error}") from None
    return Path(snapshot_download(str(name_or_path), allow_patterns=allow_patterns))


__all__ = ["resolve_folder"]
