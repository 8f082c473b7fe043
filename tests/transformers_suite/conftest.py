"""Registers the pytest marks of transformers' own tests (so that they run without unknown-mark warnings) and marks the
running release's expected failures (releases.py)."""

from pathlib import Path

import pytest
import transformers

from .releases import EXPECTED_FAILURES

TRANSFORMERS_TEST_MARKS = (
    "accelerate_tests",
    "flash_attn_3_test",
    "flash_attn_4_test",
    "flash_attn_test",
    "torch_compile_test",
)


def pytest_configure(config):
    for mark in TRANSFORMERS_TEST_MARKS:
        config.addinivalue_line("markers", f"{mark}: a mark of transformers' own tests")


def pytest_collection_modifyitems(items):
    expected = EXPECTED_FAILURES.get(transformers.__version__, {})
    for item in items:
        if item.path.is_relative_to(Path(__file__).parent) and item.originalname in expected:
            item.add_marker(pytest.mark.xfail(reason=expected[item.originalname], strict=True))
