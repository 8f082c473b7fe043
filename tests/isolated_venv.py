"""Virtual environments of the tools users run this project in (another transformers release, vLLM, lmms-eval).

A Hub user runs the project's model files under their own packages and without this package installed, so an
integration is proven in a venv that holds only what that user installs: torch, then the tool with its own pins. Each
venv is built once and cached outside the clone, under ``$MMFUSER_LLAVA_CACHE`` (default ``~/.cache/mmfuser-llava``),
in a folder named after a hash of what it installs; a stamp written last marks it complete, so an interrupted build is
redone and a changed requirement list builds a new venv beside the old one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

# The CPU wheel (on this machine's disk); a GPU machine takes the default build, as the Makefile does.
TORCH = os.environ.get("MMFUSER_LLAVA_TORCH", "torch==2.13.0")
# PyPI's builds of these are CUDA-linked and break `import` beside the CPU torch; tools pull them in regardless.
CUDA_LINKED_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")
STAMP = "mmfuser-llava-venv.json"
BUILD_TIMEOUT_SECONDS = 40 * 60


def cache_root() -> Path:
    return Path(os.environ.get("MMFUSER_LLAVA_CACHE", Path.home() / ".cache" / "mmfuser-llava"))


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


def cached_venv(
    name: str,
    requirements: Sequence[str],
    *,
    constraints: Sequence[str] = (),
    uninstall: Sequence[str] = CUDA_LINKED_COMPANIONS,
    share_torch: bool = False,
) -> Path:
    """The python of a venv holding torch and ``requirements`` (pip's syntax), built on first use and cached.

    ``constraints`` pin versions without requesting packages (pip's ``-c``); ``uninstall`` is removed afterwards.
    ``share_torch`` puts the torch of one cached venv on the path (a ``.pth`` file) instead of installing it again,
    which saves most of a build: for tools that run on the torch they find (not those that pin their own).
    Concurrent callers (pytest-xdist workers) wait for one build instead of racing it.
    """
    torch_spec = None if has_gpu() else TORCH
    recipe = {
        "python": sys.version.split()[0],
        "torch": torch_spec,
        "requirements": list(requirements),
        "constraints": list(constraints),
        "uninstall": list(uninstall),
    }
    if share_torch:
        recipe["shared_torch"] = str(_site_packages(cached_venv("torch", [torch_spec or "torch"], uninstall=())))

    def build(venv: Path) -> list[str]:
        python = venv / "bin" / "python"
        _build(venv, python, torch_spec, requirements, constraints, uninstall, recipe.get("shared_torch"))
        return _run([python, "-m", "pip", "freeze"]).stdout.split()

    return _cached_build(name, recipe, build) / "bin" / "python"


def cached_packages(name: str, requirements: Sequence[str]) -> Path:
    """A folder holding ``requirements`` (pure-Python packages, pip's syntax) and their dependencies, installed with
    ``pip install --target``, built on first use and cached like a venv: tools a venv of a user's packages lacks (a
    test runner), which a process of that venv appends to ``sys.path`` after its own packages."""
    recipe = {"python": sys.version.split()[0], "target": list(requirements)}

    def build(folder: Path) -> list[str]:
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", folder,
              *requirements])
        return sorted(path.name for path in folder.glob("*.dist-info"))

    return _cached_build(name, recipe, build)


def _cached_build(name: str, recipe: dict, build) -> Path:
    """``cache_root()/venvs/<name>-<hash of recipe>``, made by ``build(folder)`` (which returns what it installed) on
    first use; a stamp written last marks it complete, and concurrent callers wait for one build."""
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    root = cache_root() / "venvs"
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"{name}-{key}"
    with open(root / f"{name}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / STAMP).exists():
            return folder
        shutil.rmtree(folder, ignore_errors=True)  # an interrupted build
        installed = build(folder)
        (folder / STAMP).write_text(json.dumps({**recipe, "installed": installed}, indent=1))
    return folder


def _site_packages(python: Path) -> Path:
    return Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())


def _build(
    venv: Path, python: Path, torch_spec: str | None, requirements, constraints, uninstall, shared_torch: str | None
) -> None:
    _run([sys.executable, "-m", "venv", venv])
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if shared_torch:
        (_site_packages(python) / "shared-torch.pth").write_text(shared_torch + "\n")
    elif torch_spec:
        _run([*pip, torch_spec])
    constraint_file = venv / "constraints.txt"
    constraint_file.write_text("\n".join([*constraints, torch_spec or ""]) + "\n")
    _run([*pip, "-c", constraint_file, *requirements])
    if uninstall:
        _run([python, "-m", "pip", "uninstall", "--quiet", "--yes", *uninstall])


def _run(command: Sequence, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECONDS, **kwargs
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


PACKAGE = "modeling_mmfuser_llava"


def package_blocker() -> Path:
    """A folder holding a module named like this package that raises ImportError: first on PYTHONPATH, it hides the
    package from a process and every process it starts, also in an environment where the package is installed (the
    project's own venv, editable): there, dropping PYTHONPATH alone leaves it importable."""
    folder = cache_root() / "without-package"
    module = folder / f"{PACKAGE}.py"
    text = f"raise ImportError('{PACKAGE} is hidden from this process: it runs as a user without the package')\n"
    if not module.is_file() or module.read_text() != text:
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{PACKAGE}.{os.getpid()}.partial"  # concurrent writers each move a whole file in
        partial.write_text(text)
        partial.replace(module)
    return folder


def user_environment(hide_package: bool = True, **extra: str) -> dict[str, str]:
    """The environment of a Hub user's process: nothing of this clone on PYTHONPATH, offline, quiet, and (unless
    `hide_package` is false: a user who installed it, e.g. for a tool's plugin) this package unimportable."""
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environment.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    if hide_package:
        environment["PYTHONPATH"] = str(package_blocker())
    return environment


def _check_package_hidden(python: Path, cwd: Path, environment: dict[str, str]) -> None:
    try_import = f"import sys\ntry:\n    import {PACKAGE}\nexcept ImportError:\n    sys.exit(0)\nsys.exit(1)"
    probe = subprocess.run(
        [str(python), "-c", try_import], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )
    if probe.returncode != 0:
        raise AssertionError(f"{PACKAGE} is importable by {python}: the test would prove nothing")


def _check_package_installed(python: Path, cwd: Path, environment: dict[str, str]) -> None:
    find_package = f"import importlib.util as u; s = u.find_spec('{PACKAGE}'); print(s.origin if s else '')"
    probe = subprocess.run(
        [str(python), "-c", find_package], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )
    origin, venv = probe.stdout.strip(), Path(python).parent.parent
    if not origin.startswith(str(venv)):
        raise AssertionError(f"{PACKAGE} is not installed in {venv} (found: {origin or 'nothing'})")


def run_as_user(
    python: Path, arguments: Sequence, cwd: Path, timeout: float, installed: bool = False, **extra_env: str
):
    """Run ``python arguments`` where a Hub user would: from ``cwd`` (outside the clone), with ``user_environment``
    and standard input closed (a prompt for input fails instead of waiting). ``python`` may be this venv's own (``sys.executable``): the package is then blocked, not merely left off the path.

    Fails, with the child's output, if the process fails or if this package is importable there; with ``installed``
    (a user who `pip install`ed the package, e.g. for a tool's plugin), if it is not imported from the venv itself.
    """
    environment = user_environment(hide_package=not installed, **extra_env)
    if installed:
        _check_package_installed(python, cwd, environment)
    else:
        _check_package_hidden(python, cwd, environment)
    result = subprocess.run(
        [str(python), *map(str, arguments)], cwd=cwd, env=environment, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        command = " ".join(map(str, arguments))
        raise AssertionError(f"{python} {command} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


def start_as_user(python: Path, arguments: Sequence, cwd: Path, log: Path, **extra_env: str) -> subprocess.Popen:
    """Start ``python arguments`` as `run_as_user` runs it, in the background (a server), output into ``log``.

    The process leads a session of its own: stop it and its children with ``os.killpg(process.pid, ...)``.
    """
    environment = user_environment(**extra_env)
    _check_package_hidden(python, cwd, environment)
    with open(log, "w") as output:
        return subprocess.Popen([str(python), *map(str, arguments)], cwd=cwd, env=environment, stdout=output,
                                stderr=subprocess.STDOUT, start_new_session=True)
