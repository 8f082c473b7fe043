"""Upload a Hub folder: create the repo, then `upload_folder` (streamed, resumable and multi-commit for large files
with hf_xet, huggingface_hub's default). `dry_run` only lists what would be uploaded, without touching the network."""

from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .errors import ConversionError

# Never uploaded: git internals and huggingface_hub's local upload bookkeeping.
SKIPPED_PARTS = {".git", ".cache"}


@dataclass(frozen=True)
class UploadFile:
    path: str
    size: int


def upload_plan(folder: str | Path) -> list[UploadFile]:
    """Every file that an upload of `folder` sends, relative path and size, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"{folder} is not a folder")
    return [
        UploadFile(path.relative_to(folder).as_posix(), path.stat().st_size)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not SKIPPED_PARTS & set(path.relative_to(folder).parts)
    ]


def describe_upload(repo_id: str, files: list[UploadFile], private: bool) -> str:
    lines = [f"{'would upload' if files else 'nothing to upload'} to {repo_id} ({'private' if private else 'public'}):"]
    lines += [f"  {file.size:>15,d}  {file.path}" for file in files]
    lines.append(f"  {sum(file.size for file in files):>15,d}  total bytes in {len(files)} files")
    return "\n".join(lines)


def push_folder(
    folder: str | Path, repo_id: str, private: bool = False, dry_run: bool = False, token: str | None = None
) -> list[UploadFile]:
    """Create `repo_id` (if needed) and upload `folder` to it; with `dry_run`, only return what would be uploaded."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ConversionError(f"{repo_id!r} is not a valid Hub repo id: {error}") from None
    files = upload_plan(folder)
    if not dry_run:
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id, folder_path=folder, repo_type="model", commit_message="Upload MMFuser-LLaVA",
            ignore_patterns=[f"{part}/**" for part in SKIPPED_PARTS],
        )
    return files


__all__ = ["UploadFile", "describe_upload", "push_folder", "upload_plan"]
