"""The few formulas that run on numpy arrays as well as on torch tensors.

Decoding calls every adapted layer once per generated token with a handful of tokens, and RadarGate's
coefficients are some thirty elementwise operations on ``[T, n]`` arrays: at that size each operation costs
its dispatch, about 1.5 us in torch and 0.3-0.5 us in numpy (RadarGate's rotation math on one token: 20 us in
torch, 5 us in numpy). So the same code, written with operators and methods that both libraries share,
runs in numpy for a few tokens without autograd, and in torch everywhere else.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import torch

Array = torch.Tensor | np.ndarray


def namespace(array: Array) -> ModuleType:
    """``numpy`` for a numpy array, else ``torch``: where ``sqrt``, ``sin``... of ``array`` live."""
    return np if isinstance(array, np.ndarray) else torch


def contiguous(array: Array) -> Array:
    return np.ascontiguousarray(array) if isinstance(array, np.ndarray) else array.contiguous()


def addcmul(base: Array, left: Array, right: Array) -> Array:
    """``base + left * right``; torch's fused ``addcmul`` on tensors, whose gradient the hand-written RadarGate
    backward follows term by term (``tests/test_radar.py`` compares them where the plane degenerates)."""
    return base + left * right if isinstance(base, np.ndarray) else torch.addcmul(base, left, right)
