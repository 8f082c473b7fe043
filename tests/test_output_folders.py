"""Output folders (convert, upcycle, experiment, demo, synthetic data all write through `staged_output`): the modes the
user's umask gives, and `--overwrite` that never loses both the old and the new folder."""

import os
import shutil
import stat
from pathlib import Path

import pytest

from modeling_mmfuser_llava.demo import write_tiny_hub_folder
from modeling_mmfuser_llava.hub_folder import staged_output


@pytest.fixture
def umask():
    """Set the process umask for one test (the parameter), restoring the previous one after."""
    def set_umask(mask: int) -> None:
        os.umask(mask)
    previous = os.umask(0o022)
    yield set_umask
    os.umask(previous)


def modes(folder: Path) -> dict[str, int]:
    """Permission bits of `folder` ("") and of everything in it, by relative path."""
    return {path.relative_to(folder).as_posix() if path != folder else "": stat.S_IMODE(path.stat().st_mode)
            for path in [folder, *folder.rglob("*")]}


@pytest.mark.parametrize(("mask", "folder_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o002, 0o775, 0o664),
                                                               (0o077, 0o700, 0o600)])
def test_output_follows_the_umask(tmp_path, umask, mask, folder_mode, file_mode):
    source = tmp_path / "private.txt"
    source.write_text("copied with its mode")
    source.chmod(0o600)
    umask(mask)
    with staged_output(tmp_path / "out") as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "written.txt").write_text("x")
        shutil.copy(source, staging / "copied.txt")  # as transformers copies the model code: source mode kept
    write_tiny_hub_folder(tmp_path / "hub")  # what convert, upcycle and demo write: weights, code, processor
    for folder in (tmp_path / "out", tmp_path / "hub"):
        found = modes(folder)
        assert {path: mode for path, mode in found.items() if (folder / path).is_dir()} == {
            path: folder_mode for path in found if (folder / path).is_dir()}
        assert {path: mode for path, mode in found.items() if (folder / path).is_file()} == {
            path: file_mode for path in found if (folder / path).is_file()}
    assert "modeling_mmfuser_llava.py" in modes(tmp_path / "hub") and "copied.txt" in modes(tmp_path / "out")


class Interrupted(BaseException):
    """Stands for a KeyboardInterrupt (not caught by `except Exception`)."""


def interrupt_at(monkeypatch, step: int, after: bool) -> list[str]:
    """Make the `step`-th file-system move or delete of `staged_output` raise, before or after doing its work, as an
    interrupt would; returns the operations called."""
    calls = []

    def wrap(name, real):
        def operation(*args, **kwargs):
            calls.append(name)
            if len(calls) == step and not after:
                raise Interrupted(name)
            result = real(*args, **kwargs)
            if len(calls) == step:
                raise Interrupted(name)
            return result
        return operation

    monkeypatch.setattr(os, "replace", wrap("replace", os.replace))
    monkeypatch.setattr(os, "rename", wrap("rename", os.rename))
    monkeypatch.setattr(shutil, "rmtree", wrap("rmtree", shutil.rmtree))
    return calls


def write_complete_folder(folder: Path, version: str) -> None:
    for name in ("a.txt", "b.txt"):
        (folder / name).write_text(version)
    (folder / "sub").mkdir()
    (folder / "sub" / "c.txt").write_text(version)


def folder_contents(folder: Path) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): path.read_text() for path in folder.rglob("*") if path.is_file()}


OLD = {"a.txt": "old", "b.txt": "old", "sub/c.txt": "old"}
NEW = {"a.txt": "new", "b.txt": "new", "sub/c.txt": "new"}


def test_overwrite_replaces_and_leaves_nothing_else(tmp_path, monkeypatch):
    output = tmp_path / "out"
    output.mkdir()
    write_complete_folder(output, "old")
    calls = interrupt_at(monkeypatch, 0, after=False)  # records the steps, interrupts none
    with staged_output(output, overwrite=True) as staging:
        write_complete_folder(staging, "new")
    assert folder_contents(output) == NEW and [path.name for path in tmp_path.iterdir()] == ["out"]
    assert calls == ["replace", "replace", "rmtree", "rmtree"]  # the steps numbered below


# Steps of a replacement: move the old folder aside, move the new one in, delete the old one, clean the staging folder.
@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_overwrite_interrupted_at_any_step_leaves_one_complete_folder(tmp_path, monkeypatch, step, after):
    output = tmp_path / "out"
    output.mkdir()
    write_complete_folder(output, "old")
    interrupt_at(monkeypatch, step, after)
    with pytest.raises(Interrupted):
        with staged_output(output, overwrite=True) as staging:
            write_complete_folder(staging, "new")
    assert folder_contents(output) in (OLD, NEW)


def test_interrupt_while_writing_keeps_the_old_folder(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    write_complete_folder(output, "old")
    with pytest.raises(Interrupted):
        with staged_output(output, overwrite=True) as staging:
            (staging / "a.txt").write_text("new")
            raise Interrupted
    assert folder_contents(output) == OLD and [path.name for path in tmp_path.iterdir()] == ["out"]
