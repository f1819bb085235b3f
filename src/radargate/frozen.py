"""Tensors derived from parameters alone, kept between calls while nothing can change them.

Generation calls every adapted layer once per new token with a handful of tokens, so work that
depends only on the weights (RadarGate's fusion matrix, the experts' ``B B^T`` blocks) would
otherwise be redone thousands of times on identical inputs. Only used when no gradient is being
recorded: with autograd on, the graph must see the computation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _fingerprint(tensor: torch.Tensor) -> tuple:
    """Changes whenever the tensor's values can have: an in-place update bumps ``_version``,
    ``module.to(...)`` or ``load_state_dict(assign=True)`` give new storage."""
    return tensor.data_ptr(), tensor._version, tensor.dtype, tensor.device, tensor.shape


class FrozenCache:
    """``get(name, compute, *sources)``: ``compute()``, reused while no gradient is recorded and
    ``sources`` are unchanged."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple, torch.Tensor]] = {}

    def get(self, name: str, compute: Callable[[], torch.Tensor], *sources: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return compute()
        key = tuple(_fingerprint(source) for source in sources)
        entry = self._entries.get(name)
        if entry is None or entry[0] != key:
            entry = (key, compute())
            self._entries[name] = entry
        return entry[1]
