"""The fetch of transformers' own test files (tests/transformers_sdist.py): a file other than the one recorded is refused
and nothing of it is kept; a warm cache is used without pip; a cold cache with no index fails saying how to fill it."""

import io
import os
import socket
import tarfile
from importlib.metadata import version
from pathlib import Path

import pytest

import transformers_sdist
from transformers_releases import TRANSFORMERS_RELEASES
from transformers_sdist import SdistUnavailable, sdist_cache, sha256_of, transformers_tests

RELEASE = "5.23.0"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MMFUSER_LLAVA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_sdist(folder: Path, release: str = RELEASE, text: str = "class ModelTesterMixin: ...\n") -> Path:
    """A small archive laid out as transformers' sdist is (top folder, tests/test_modeling_common.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"transformers-{release}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = text.encode()
        member = tarfile.TarInfo(f"transformers-{release}/tests/test_modeling_common.py")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    return archive


def no_download(release: str, into: Path) -> Path:
    raise AssertionError("the cache was warm: nothing should be downloaded")


def test_the_pinned_release_is_in_the_matrix():
    assert version("transformers") in TRANSFORMERS_RELEASES


def test_every_recorded_sha256_is_one():
    assert all(len(sha) == 64 and int(sha, 16) >= 0 for sha in TRANSFORMERS_RELEASES.values())


def test_an_archive_other_than_the_recorded_one_is_refused_and_nothing_is_kept(empty_cache):
    (empty_cache / "transformers-sdist" / f".partial-{RELEASE}-1" / "download").mkdir(parents=True)  # a killed fetch
    recorded = TRANSFORMERS_RELEASES[RELEASE]
    with pytest.raises(SdistUnavailable, match=rf"refused transformers-{RELEASE}\.tar\.gz: its sha256 is [0-9a-f]{{64}}, "
                       rf"but tests/transformers_releases\.py records {recorded} for transformers {RELEASE}"):
        transformers_tests(RELEASE, download=lambda release, into: write_sdist(into))
    assert list(sdist_cache().iterdir()) == []


def test_the_recorded_archive_is_unpacked_once_then_used_without_pip(empty_cache, tmp_path):
    archive = write_sdist(tmp_path / "served")
    tests = transformers_tests(RELEASE, sha256_of(archive), download=lambda release, into: write_sdist(into))
    assert tests.parent.parent == sdist_cache()
    assert (tests / "test_modeling_common.py").read_text() == "class ModelTesterMixin: ...\n"
    assert (tests / "__init__.py").read_text() == ""  # the repository's, which the sdist lacks
    assert sorted(path.name for path in sdist_cache().iterdir()) == [tests.parent.name]  # no partial folder left
    assert transformers_tests(RELEASE, sha256_of(archive), download=no_download) == tests


def test_a_release_outside_the_matrix_is_refused_naming_where_to_record_it(empty_cache):
    with pytest.raises(SdistUnavailable, match=r"transformers 5\.0\.0 is not in the matrix \(tests/transformers_releases"):
        transformers_tests("5.0.0", download=no_download)


def closed_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def test_a_cold_cache_with_no_index_fails_saying_how_to_fill_it(empty_cache, monkeypatch):
    """pip's index is a closed port on this machine (no configuration file, no other index or links)."""
    for name in [name for name in os.environ if name.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{closed_port()}/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    monkeypatch.setattr(transformers_sdist, "DOWNLOAD_TIMEOUT_SECONDS", 60)
    with pytest.raises(SdistUnavailable) as refusal:
        transformers_tests(RELEASE)
    message = str(refusal.value)
    assert f"transformers {RELEASE}'s source distribution is not in the cache ({sdist_cache()})" in message
    assert f"Fill the cache where PyPI can be reached: `.venv/bin/python tests/transformers_sdist.py {RELEASE}`" in message
    assert list(sdist_cache().iterdir()) == []
