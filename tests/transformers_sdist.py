"""transformers' own test files, fetched from a release's source distribution on PyPI at test time, not kept in the tree.

`transformers_tests(release)` is the `tests/` folder of `transformers-<release>.tar.gz`, the file whose sha256
tests/transformers_releases.py records for that release. On first use it is downloaded with
`pip download --no-binary :all: --no-deps transformers==<release>`, checked against that sha256 and unpacked under
`$MMFUSER_LLAVA_CACHE/transformers-sdist/` (default ~/.cache/mmfuser-llava, beside the integration venvs); with the
folder there, nothing is downloaded (offline works). The one file added to what is unpacked is an empty
`tests/__init__.py`, which transformers' repository has and its sdist lacks. Everything is written in a `.partial-*`
folder first and the unpacked sdist moved into place by one rename, so an interrupted or refused fetch leaves no half
of one behind.

Fill the cache ahead (e.g. before going offline): `.venv/bin/python tests/transformers_sdist.py [RELEASE ...]` (no
release: every release of the matrix).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

from isolated_venv import cache_root
from transformers_releases import TRANSFORMERS_RELEASES

DOWNLOAD_TIMEOUT_SECONDS = 600
FILL_COMMAND = ".venv/bin/python tests/transformers_sdist.py"


class SdistUnavailable(RuntimeError):
    """transformers' test files of a release are neither in the cache nor to be had as recorded."""


def sdist_cache() -> Path:
    return cache_root() / "transformers-sdist"


def recorded_sha256(release: str) -> str:
    if release not in TRANSFORMERS_RELEASES:
        raise SdistUnavailable(
            f"transformers {release} is not in the matrix (tests/transformers_releases.py), so no sha256 of its source "
            "distribution is recorded: add its line there to run transformers' own model tests under it"
        )
    return TRANSFORMERS_RELEASES[release]


def pip_download(release: str, into: Path) -> Path:
    """`pip download` the release's source distribution into `into`; the archive's path."""
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-binary", ":all:",
               "--no-deps", "--dest", str(into), f"transformers=={release}"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_SECONDS)
        failure = None if result.returncode == 0 else (result.stdout[-1500:] + result.stderr[-3000:]).strip()
    except subprocess.TimeoutExpired:
        failure = f"no answer in {DOWNLOAD_TIMEOUT_SECONDS} s"
    archives = sorted(into.glob("transformers-*.tar.gz"))
    if failure is not None or len(archives) != 1:
        raise SdistUnavailable(
            f"transformers {release}'s source distribution is not in the cache ({sdist_cache()}) and pip could not "
            f"download it ({' '.join(command[2:])}):\n{failure or 'pip saved no transformers-*.tar.gz'}\n"
            f"Fill the cache where PyPI can be reached: `{FILL_COMMAND} {release}` (or run `make test` once there), "
            "with the same MMFUSER_LLAVA_CACHE; it is then used offline."
        )
    return archives[0]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def transformers_tests(
    release: str, sha256: str | None = None, download: Callable[[str, Path], Path] = pip_download
) -> Path:
    """The `tests/` folder of transformers `release`'s source distribution (the one recorded: `sha256`), fetched on
    first use (see the module's docstring). Concurrent callers (pytest-xdist workers) wait for one fetch."""
    sha256 = sha256 or recorded_sha256(release)
    folder = sdist_cache() / f"transformers-{release}-{sha256[:12]}"
    if not folder.is_dir():
        sdist_cache().mkdir(parents=True, exist_ok=True)
        with open(cache_root() / "transformers-sdist.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not folder.is_dir():
                _fetch(release, sha256, folder, download)
    return folder / "tests"


def _fetch(release: str, sha256: str, folder: Path, download: Callable[[str, Path], Path]) -> None:
    for stale in sdist_cache().glob(".partial-*"):  # left by a fetch that was killed (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    partial = sdist_cache() / f".partial-{release}-{os.getpid()}"
    try:
        (partial / "download").mkdir(parents=True)
        archive = download(release, partial / "download")
        found = sha256_of(archive)
        if found != sha256:
            raise SdistUnavailable(
                f"refused {archive.name}: its sha256 is {found}, but tests/transformers_releases.py records {sha256} "
                f"for transformers {release}; nothing was kept in {sdist_cache()}. If PyPI's file really is another "
                "one, check its sha256 on PyPI before recording it."
            )
        top = f"transformers-{release}"
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(partial / "unpacked", filter="data")
            else:  # Python before 3.10.12: the archive's hash is checked, which is what the filter would guard
                tar.extractall(partial / "unpacked")
        tests = partial / "unpacked" / top / "tests"
        if not (tests / "test_modeling_common.py").is_file():
            raise SdistUnavailable(f"{archive.name} holds no {top}/tests/test_modeling_common.py")
        # The one file added: transformers' repository has an empty tests/__init__.py that its sdist lacks, and
        # test_configuration_common.py executes it (`direct_transformers_import(Path(__file__).parent)`).
        (tests / "__init__.py").touch(exist_ok=True)
        (partial / "unpacked" / top).rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


if __name__ == "__main__":
    try:
        for name in sys.argv[1:] or list(TRANSFORMERS_RELEASES):
            print(transformers_tests(name))
    except SdistUnavailable as unavailable:
        sys.exit(str(unavailable))
