"""Silence bitsandbytes' import-time warning about an optional CPU kernel, which every command printed.

transformers' Trainer imports peft, which imports bitsandbytes where it is installed (the `quantization` extra), and
on CPUs with AVX512-BF16 bitsandbytes then logs that it could not load the `kernels` package's 4-bit matmul. That
kernel only speeds up a 4-bit model on a CPU; runs that do not quantize never call it, yet the line came first on
their output (`mmfuser-llava --help` included). The package imports this module first, before anything imports bitsandbytes.
"""

import logging

KERNELS_WARNING_START = "Failed to load CPU gemm_4bit_forward from kernels-community"


class DropKernelsWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(KERNELS_WARNING_START)


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(DropKernelsWarning())
