"""Commands that do not quantize print no bitsandbytes warning (issue 26, part 5).

Before, every command's first stderr line was bitsandbytes' "Failed to load CPU gemm_4bit_forward from
kernels-community", logged when transformers' Trainer (through peft) or the weight loader imported it.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from modeling_mmfuser_llava.quiet_bitsandbytes import KERNELS_WARNING_START

CLI = [sys.executable, "-m", "modeling_mmfuser_llava.cli"]


@pytest.mark.parametrize("arguments", [["--help"], ["train", "--help"], ["demo", "--save-dir", "{tmp}/tiny"]],
                         ids=["help", "train-help", "demo"])
def test_commands_print_no_bitsandbytes_kernels_warning(tmp_path: Path, arguments: list[str]):
    command = CLI + [argument.format(tmp=tmp_path) for argument in arguments]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert KERNELS_WARNING_START not in finished.stderr
    assert "kernels" not in finished.stderr.lower()
