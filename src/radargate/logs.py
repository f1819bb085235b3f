"""Third-party log lines that would mislead radargate's users, dropped wherever radargate's commands run
(the command line, and the worker processes a study starts)."""

from __future__ import annotations

import logging


def quiet_bitsandbytes_kernel_hint() -> None:
    """bitsandbytes, imported by PEFT whenever it is installed, warns on AVX512-BF16 CPUs that an optional
    kernel from the Hub is missing and suggests `pip install kernels` (which would fetch code from the Hub at
    run time); its own kernels serve radargate, so every command would print a misleading line. Only that
    message is dropped. Call it before PEFT is imported."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: "gemm_4bit_forward from kernels-community" not in record.getMessage())
