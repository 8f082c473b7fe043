"""`make gpu-check`: without a GPU it refuses with a clear message; its dry run does every step that needs none."""

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import install_wheels, junit_rows, main

from conftest import REPO_ROOT


def write_wheel(folder: Path, name: str, tag: str) -> None:
    """A minimal installable wheel, so that pip's offline resolution runs for real without any download."""
    folder.mkdir(exist_ok=True)
    dist_info = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": "",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{dist_info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n",
    }
    with zipfile.ZipFile(folder / f"{name}-1.0-{tag}.whl", "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)
        wheel.writestr(f"{dist_info}/RECORD", "".join(f"{path},,\n" for path in [*files, f"{dist_info}/RECORD"]))


def cuda_test_names() -> set[str]:
    tree = ast.parse((REPO_ROOT / "tests" / "test_gpu.py").read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_dry_run_resolves_the_wheels_collects_the_cuda_tests_and_measures_tiny_rows(tmp_path):
    write_wheel(tmp_path / "wheels", "gpucheckprobe", "py3-none-any")
    output = tmp_path / "table.md"
    assert main(["--dry-run", "--wheels", str(tmp_path / "wheels"), "--output", str(output)]) == 0
    lines = output.read_text().splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("| ")][1:]
    assert rows[0] == ["install the carried wheels (resolved only)", "gpucheckprobe 1.0", "ok", "", "", ""]
    collected = {row[0] for row in rows if row[2] == "collected (dry run)"}
    assert {name.split("::")[1].split("[")[0] for name in collected if name.startswith("test_gpu.py")} == \
        cuda_test_names()
    assert "test_fast_sampling.py::test_cuda_hub_kernel_equals_reference" in collected
    benchmarks = {(row[0][:3], row[1]) for row in rows if row[0].startswith("(")}
    settings = {setting for _, setting in benchmarks}
    assert {"bfloat16, batch 1, tiny sizes, dry run", "bfloat16, batch 2, tiny sizes, dry run"} <= settings
    assert {measurement for measurement, _ in benchmarks} == {"(c)", "(d)", "(f)"}
    assert any("activation checkpointing" in setting for setting in settings)
    assert all(float(row[4]) > 0 for row in rows if row[0].startswith("("))


def test_dry_run_refuses_wheels_the_device_cannot_install(tmp_path):
    """The lent machines run Python 3.12: a wheel for another Python stops the check before any test runs."""
    write_wheel(tmp_path / "wheels", "gpucheckprobe", "cp311-cp311-manylinux_2_17_x86_64")
    with pytest.raises(SystemExit, match="pip could not install the wheels"):
        main(["--dry-run", "--wheels", str(tmp_path / "wheels"), "--output", str(tmp_path / "table.md")])
    assert not (tmp_path / "table.md").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without a GPU")
def test_without_a_gpu_it_says_so_and_fails(tmp_path, capsys):
    assert main(["--wheels", str(tmp_path), "--output", str(tmp_path / "table.md")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "table.md").exists()


def test_the_gpu_runs_install_and_report_steps(tmp_path):
    """What only the GPU run does beyond the dry run: the real offline install into its own folder, and the table's
    rows read off pytest's JUnit report (passed, failed with its message, skipped with its reason)."""
    write_wheel(tmp_path / "wheels", "gpucheckprobe", "py3-none-any")
    [row] = install_wheels(tmp_path / "wheels", tmp_path / "site", dry_run=False)
    assert row.result == "ok" and (tmp_path / "site" / "gpucheckprobe" / "__init__.py").is_file()
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n\ndef test_passes():\n    pass\n\ndef test_fails():\n    assert 1 == 2, 'one is not two'\n\n"
        "@pytest.mark.skip(reason='no such device')\ndef test_skips():\n    pass\n"
    )
    report = tmp_path / "junit.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                    "test_sample.py"], cwd=tmp_path, capture_output=True, timeout=120)
    outcomes = {row.check: row.result for row in junit_rows(report)}
    assert outcomes["test_sample::test_passes"] == "passed"
    assert outcomes["test_sample::test_fails"].startswith("FAILED: AssertionError: one is not two")
    assert outcomes["test_sample::test_skips"] == "skipped: no such device"
