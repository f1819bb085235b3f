"""Failures of the work itself (not of its input), which the command line reports with exit status 1."""

from __future__ import annotations


class TrainingDiverged(RuntimeError):
    """Training produced non-finite losses, gradients or weights; nothing non-finite was saved."""


class QuantizationUnavailable(RuntimeError):
    """``model.quantization`` is set, but bitsandbytes is missing or cannot run on this device."""


class DataUnavailable(RuntimeError):
    """A data or model file that comes from the package index cannot be had: the index is unreachable, no longer
    lists it, or serves something else."""
