"""Failures of the work itself (not of its input), which the command line reports with exit status 1."""

from __future__ import annotations


class TrainingDiverged(RuntimeError):
    """Training produced non-finite losses, gradients or weights; nothing non-finite was saved."""
