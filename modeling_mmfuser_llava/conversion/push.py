"""Upload a Hub folder: create the repo, then `upload_folder` (streamed, resumable and multi-commit for large files
with hf_xet, huggingface_hub's default). `dry_run` only lists what would be uploaded, without touching the network."""

import importlib
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import HFValidationError, filter_repo_objects, validate_repo_id

from .errors import ConversionError

# Never uploaded, at any depth: git internals and huggingface_hub's local upload bookkeeping (the Hub refuses a
# `.cache` folder anywhere). One list for the dry run and the upload, in huggingface_hub's pattern syntax (fnmatch,
# where `*` also matches `/`).
IGNORE_PATTERNS = (".git/*", "*/.git/*", ".cache/*", "*/.cache/*")


class PushError(RuntimeError):
    """The upload failed (network, token, the Hub); the local folder is complete."""


def hub_request_errors() -> tuple[type[BaseException], ...]:
    """What a failed Hub request raises: huggingface_hub's HTTP errors, OS-level ones (no token, offline mode,
    `requests`' errors) and the errors of the HTTP client huggingface_hub uses (httpx2 from version 2, httpx in 1)."""
    errors: list[type[BaseException]] = [HfHubHTTPError, OSError]
    for client in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(client).HTTPError)
        except ImportError:
            pass
    return tuple(errors)


@dataclass(frozen=True)
class UploadFile:
    path: str
    size: int


def upload_plan(folder: str | Path) -> list[UploadFile]:
    """Every file that an upload of `folder` sends, relative path and size, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"{folder} is not a folder")
    files = {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}
    return [UploadFile(name, files[name].stat().st_size)
            for name in filter_repo_objects(files, ignore_patterns=list(IGNORE_PATTERNS))]


def describe_upload(repo_id: str, files: list[UploadFile], private: bool) -> str:
    lines = [f"{'would upload' if files else 'nothing to upload'} to {repo_id} ({'private' if private else 'public'}):"]
    lines += [f"  {file.size:>15,d}  {file.path}" for file in files]
    lines.append(f"  {sum(file.size for file in files):>15,d}  total bytes in {len(files)} files")
    return "\n".join(lines)


def push_folder(
    folder: str | Path, repo_id: str, private: bool = False, dry_run: bool = False, token: str | None = None
) -> list[UploadFile]:
    """Create `repo_id` (if needed) and upload `folder` to it; with `dry_run`, only return what would be uploaded.

    A failed request raises `PushError`, naming what failed and the (complete) local folder.
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ConversionError(f"{repo_id!r} is not a valid Hub repo id: {error}") from None
    files = upload_plan(folder)
    if dry_run:
        return files
    api = HfApi(token=token)
    step = f"creating the Hub repo {repo_id}"
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        step = f"uploading {folder} to {repo_id}"
        api.upload_folder(
            repo_id=repo_id, folder_path=folder, repo_type="model", commit_message="Upload MMFuser-LLaVA",
            ignore_patterns=list(IGNORE_PATTERNS),  # a copy: upload_folder extends the list it is given
        )
    except hub_request_errors() as error:
        raise PushError(
            f"{step} failed ({type(error).__name__}: {error}). The local folder is complete at {folder}: upload it "
            f"later with `hf upload {repo_id} {folder} .{' --private' if private else ''}`"
        ) from error
    return files


__all__ = ["IGNORE_PATTERNS", "PushError", "UploadFile", "describe_upload", "push_folder", "upload_plan"]
