"""transformers' own model tests (tests/transformers_suite) under every other release of the matrix, each in its venv.

`make test` runs the suite under the pinned release, in the dev venv. Here each other release of the matrix
(tests/transformers_releases.py) runs it in the venv the matrix builds for it (torch CPU, that transformers, pillow,
jinja2), with that release's own test files (its sdist, fetched by tests/transformers_sdist.py) and this clone's model
code on PYTHONPATH. pytest and parameterized, which a user's venv lacks, come from a cached folder (the dev venv's
releases of both) that the run appends to `sys.path` after the venv's own packages. What a release needs beyond that
is in tests/transformers_suite/releases.py.
"""

import os
import re
import resource
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from isolated_venv import cached_packages
from transformers_releases import TRANSFORMERS_RELEASES, release_python
from transformers_sdist import transformers_tests

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[1]
SUITE = REPO_ROOT / "tests" / "transformers_suite"
PINNED_TRANSFORMERS = version("transformers")  # its run is part of `make test`
RUN_TIMEOUT_SECONDS = 1200
# Run pytest with the tools folder (argv[1]) appended to sys.path: the venv's own packages come first.
RUNNER = "import sys; sys.path.append(sys.argv.pop(1)); import pytest; sys.exit(pytest.main())"


def runner_tools() -> Path:
    return cached_packages(
        "transformers-suite-tools", [f"pytest=={version('pytest')}", f"parameterized=={version('parameterized')}"]
    )


def run_suite(python: Path, tools: Path) -> subprocess.CompletedProcess:
    """The suite under `python`'s transformers, from the repository root; conftest.py files above the suite (the
    project's fixtures, which need the dev venv) are not loaded."""
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environment.update(PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [python, "-c", RUNNER, tools, SUITE.relative_to(REPO_ROOT), "-q", "-rsx", "-p", "no:cacheprovider",
               "--confcutdir", SUITE]
    return subprocess.run([str(part) for part in command], cwd=REPO_ROOT, env=environment, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_SECONDS)


def cpu_seconds(after, before) -> float:
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def summary_counts(output: str) -> dict[str, int]:
    """pytest's closing line as counts: {"passed": 118, "skipped": 51, ...} (subtests left out)."""
    closing = output.strip().splitlines()[-1]
    closing = re.sub(r"\d+ subtests? \w+,? ?", "", closing)
    return {word: int(count) for count, word in re.findall(r"(\d+) (passed|failed|skipped|xfailed|xpassed|error)", closing)}


@pytest.mark.parametrize("release", [release for release in TRANSFORMERS_RELEASES if release != PINNED_TRANSFORMERS])
def test_transformers_own_model_tests_pass_under_the_release(release):
    python, tools = release_python(release), runner_tools()
    release_tests = transformers_tests(release)  # fetched here, so that a missing cache fails with its message
    started, children = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = run_suite(python, tools)
    elapsed, cpu = time.monotonic() - started, cpu_seconds(resource.getrusage(resource.RUSAGE_CHILDREN), children)
    output = result.stdout + result.stderr
    counts = summary_counts(result.stdout)
    print(f"\ntransformers {release}: {counts} in {elapsed:.0f} s ({cpu:.0f} s of CPU)")
    assert result.returncode == 0, output[-8000:]
    assert counts.get("passed", 0) > 100 and not counts.get("failed") and not counts.get("error"), output[-3000:]
    sdist_file = f"{release_tests.parent.name}/tests/test_modeling_common.py"  # how the skips' lines name it
    assert sdist_file in output, f"no skip names {sdist_file}: the release's own test files did not run"


def test_summary_counts_reads_pytests_closing_line():
    closing = "2 failed, 118 passed, 51 skipped, 1 xfailed, 4 warnings, 1948 subtests passed in 18.31s"
    assert summary_counts(f"...\n{closing}\n") == {"failed": 2, "passed": 118, "skipped": 51, "xfailed": 1}


if __name__ == "__main__":  # one release by hand: python tests/test_integration_transformers_suite.py 5.24.0
    print(run_suite(release_python(sys.argv[1]), runner_tools()).stdout)
