"""Registers the pytest marks of transformers' vendored tests, so that they run without unknown-mark warnings."""

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
