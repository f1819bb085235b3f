"""A one-line description of the machine, for reports and benchmarks (imports torch, no training code)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def hardware_description() -> str:
    """The GPU, or else the CPU and the threads torch uses on it, and the torch version: what a timing was
    measured on (processes that share the cores each get a share of them as threads)."""
    if torch.cuda.is_available():
        device = f"GPU: {torch.cuda.get_device_name(0)}"
    else:
        threads = torch.get_num_threads()
        device = f"CPU: {cpu_description()}, {threads} torch thread{'s' if threads > 1 else ''}"
    return f"{device}, torch {torch.__version__}"


def cpu_description() -> str:
    return f"{os.cpu_count()} cores ({_cpu_model() or platform.processor() or platform.machine()})"


def _cpu_model() -> str | None:
    """The processor's name on Linux (``platform.processor()`` is often empty there)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
