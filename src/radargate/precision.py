"""Dtypes by name, and the one rule for half precision: adapters and routing math run in float32."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The weight dtypes a config may name, by the name it uses."""

HALF_PRECISION = (torch.float16, torch.bfloat16)


def float32_if_half(dtype: torch.dtype) -> torch.dtype:
    """float32 for a half-precision dtype, else ``dtype`` itself.

    Half precision loses the small differences that adapter updates and routing weights are made
    of, so adapters train in float32 under a half-precision base (as PEFT does) and gates compute
    their weights in at least float32.
    """
    return torch.float32 if dtype in HALF_PRECISION else dtype


def gram_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Float64 where any input is (the float64 reference checks), else float32: expert geometry is never half."""
    return torch.float64 if any(tensor.dtype == torch.float64 for tensor in tensors) else torch.float32
