"""Every notebook in notebooks/ runs top to bottom on the tiny offline model, in a kernel of this very interpreter."""

import os
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_SECONDS = 120
NOTEBOOK_BUDGET_SECONDS = 180  # about 30 s each on 2 busy CPU cores


@pytest.fixture
def venv_kernel(tmp_path, monkeypatch) -> str:
    """A `python3` kernelspec running `sys.executable` (first on JUPYTER_PATH, whatever else is installed), with this
    checkout importable in the kernel and the Hub offline."""
    from ipykernel.kernelspec import write_kernel_spec

    jupyter_dir = tmp_path / "jupyter"
    write_kernel_spec(jupyter_dir / "kernels" / "python3")
    for variable, first in (("JUPYTER_PATH", jupyter_dir), ("PYTHONPATH", REPO_ROOT)):
        monkeypatch.setenv(variable, os.pathsep.join(filter(None, [str(first), os.environ.get(variable)])))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable
    return "python3"


def test_the_notebooks_are_here():
    assert {"01_quickstart.ipynb", "02_what_the_fuser_sees.ipynb"} <= {path.name for path in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_is_committed_clean_with_a_model_line(path):
    """No outputs in the repository, and the first code cell picks the model (None: the tiny offline one)."""
    notebook = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for cell in code_cells:
        assert cell.outputs == [] and cell.execution_count is None, f"clear the outputs of {path.name}"
    assert code_cells[0].source.startswith("MODEL = None"), f"{path.name} must start with MODEL = None"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, venv_kernel):
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name=venv_kernel,
        timeout=CELL_TIMEOUT_SECONDS,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the failing cell's traceback, on any error
    elapsed = time.perf_counter() - start
    assert elapsed < NOTEBOOK_BUDGET_SECONDS, f"{path.name} took {elapsed:.0f} s"
    assert any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
