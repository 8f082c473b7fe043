"""The GPU path in one prepared command, `make gpu-check` (docs/performance.md, "The GPU check").

On a CUDA machine whose Python already has torch and transformers: installs the wheels `make gpu-wheels` carried
(bitsandbytes, peft, this project) into a folder of their own, leaving that Python's packages as they are; runs the
CUDA-marked tests; measures the GPU benchmark rows (bf16, real sizes); prints one table and writes it to
$OUT/gpu-check.md (where $OUT is set) or outputs/gpu-check.md. With `--dry-run`, every step that needs no GPU runs on
the CPU: the install only resolved, the CUDA tests only collected, the benchmark rows at tiny sizes.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WHEELS = REPO_ROOT / "gpu-wheels"
CUDA_TESTS = ["tests/test_gpu.py", "tests/test_fast_sampling.py", "tests/test_attention_backends.py"]
# The lent machines' Python (3.12, x86-64 Linux): the wheels must be for it, whatever Python checks them.
DEVICE_PLATFORM = [
    "--python-version", "3.12", "--implementation", "cp", "--only-binary", ":all:",
    *(argument for tag in ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "any")
      for argument in ("--platform", tag)),
]


@dataclass
class Row:
    """One line of the check's table: a test's outcome, or a benchmark ratio."""

    check: str
    setting: str
    result: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="on the CPU: every step that needs no GPU")
    parser.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS, help="the folder `make gpu-wheels` fills")
    parser.add_argument("--output", type=Path, default=None, help="the table's file (default $OUT/gpu-check.md, "
                        "else outputs/gpu-check.md)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per ratio (default 5; dry run 1)")
    return parser.parse_args(argv)


def install_wheels(folder: Path, target: Path, dry_run: bool) -> list[Row]:
    """pip installs every wheel of `folder` into `target`, offline, none of their dependencies (the device has them),
    for the device's platform; in a dry run pip only resolves them. A folder missing its wheels is an error on the
    GPU, a skipped step in a dry run."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        if dry_run:
            return [Row("install the carried wheels", str(folder), "skipped: no wheels (run `make gpu-wheels`)")]
        raise SystemExit(f"gpu-check: no wheels in {folder}: run `make gpu-wheels` here and carry that folder")
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
        "--no-cache-dir", "--upgrade", "--target", str(target), *DEVICE_PLATFORM, *map(str, wheels),
    ]
    if dry_run:
        command.append("--dry-run")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"gpu-check: pip could not install the wheels of {folder}:\n{result.stderr}")
    names = ", ".join(wheel.name.split("-")[0] + " " + wheel.name.split("-")[1] for wheel in wheels)
    return [Row("install the carried wheels" + (" (resolved only)" if dry_run else ""), names, "ok")]


def junit_rows(report: Path) -> list[Row]:
    """One row per test of a pytest JUnit report: passed, failed or skipped with its reason."""
    rows = []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = f"FAILED: {child.get('message', '')[:160]}"
            elif child.tag == "skipped":
                outcome = f"skipped: {child.get('message', '')[:160]}"
        module = case.get("classname", "").rsplit(".", 1)[-1]
        rows.append(Row(f"{module}::{case.get('name')}", "CUDA test", outcome))
    return rows


def run_cuda_tests(dry_run: bool, environment: dict[str, str]) -> list[Row]:
    """The CUDA-marked tests in a pytest of their own (a dry run only collects them)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", *CUDA_TESTS]
    if dry_run:
        result = subprocess.run([*command, "--collect-only"], cwd=REPO_ROOT, env=environment, capture_output=True,
                                text=True)
        collected = [line for line in result.stdout.splitlines() if "::" in line]
        if result.returncode != 0 or not collected:
            raise SystemExit(f"gpu-check: collecting the CUDA tests failed:\n{result.stdout}\n{result.stderr}")
        return [Row(node_id.removeprefix("tests/"), "CUDA test", "collected (dry run)") for node_id in collected]
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "junit.xml"
        subprocess.run([*command, "-rs", f"--junitxml={report}"], cwd=REPO_ROOT, env=environment)
        return junit_rows(report)


def benchmark_rows(dry_run: bool, rounds: int) -> list[Row]:
    """The GPU rows, measured by the benchmarks' own functions: the vision path at batch 1 and 32, generate
    tokens/s, the training step with and without activation checkpointing; bf16, real sizes (tiny in a dry run)."""
    import torch

    from .configs import REAL, TINY
    from .generation import measure_generation
    from .training import measure_training
    from .vision import measure_vision_path

    device, sizes = ("cpu", TINY) if dry_run else ("cuda", REAL)
    dtype = torch.bfloat16
    results = [result for batch in ((1, 2) if dry_run else (1, 32))
               for result in measure_vision_path(dtype, batch, rounds, device, sizes)]
    results += measure_generation(dtype, rounds, 4 if dry_run else 32, device, sizes)
    for checkpointing in (False, True):
        results += measure_training(2, rounds, dtype, device, sizes, checkpointing)
    size = "tiny sizes, dry run" if dry_run else "CLIP-L/336"
    return [
        Row(r.measurement, f"{r.setting}, {size}", r.ours, r.baseline, f"{r.ratio:.3f}", r.target) for r in results
    ]


def markdown_table(rows: list[Row]) -> str:
    lines = ["| check | setting | result | baseline | ratio (wall) | target |", "|---|---|---|---|---|---|"]
    for row in rows:
        cells = [row.check, row.setting, row.result, row.baseline, row.ratio, row.target]
        lines.append("| " + " | ".join(cell.replace("|", "/").replace("\n", " ") for cell in cells) + " |")
    return "\n".join(lines)


def default_output() -> Path:
    return Path(os.environ["OUT"]) / "gpu-check.md" if os.environ.get("OUT") else REPO_ROOT / "outputs" / "gpu-check.md"


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as file:
        file.write(text)
    Path(file.name).replace(path)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    import torch

    if not arguments.dry_run and not torch.cuda.is_available():
        print("gpu-check: torch sees no CUDA GPU on this machine, so nothing was checked. Run it on a CUDA machine, "
              "or `make gpu-check DRY_RUN=1` for the steps that need none.", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mmfuser-llava-gpu-site-") as site:
        rows = install_wheels(arguments.wheels, Path(site), arguments.dry_run)
        environment = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the lent machines reach no Hub
        if not arguments.dry_run:
            environment["PYTHONPATH"] = os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))
            sys.path.insert(0, site)
        rows += run_cuda_tests(arguments.dry_run, environment)
        rows += benchmark_rows(arguments.dry_run, arguments.rounds or (1 if arguments.dry_run else 5))
    device = "CPU (dry run)" if arguments.dry_run else torch.cuda.get_device_name()
    table = markdown_table(rows)
    summary = f"{device}, torch {torch.__version__}, {time.perf_counter() - start:.0f} s"
    output = arguments.output or default_output()
    write_atomically(output, f"{summary}\n\n{table}\n")
    print(f"{table}\n\n{summary}; written to {output}")
    return 1 if any(row.result.startswith("FAILED") for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
