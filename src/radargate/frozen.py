"""Tensors derived from parameters alone, kept between calls while nothing can change them.

Generation calls every adapted layer once per new token with a handful of tokens, so work that
depends only on the weights (RadarGate's fusion matrix, the experts' ``B B^T`` blocks) would
otherwise be redone thousands of times on identical inputs. Only used when no gradient is being
recorded (with autograd on, the graph must see the computation) and on the CPU, where that per-call
work is what decoding waits for.

Whether the weights changed is decided by their values, compared with a copy kept beside the cached
result. A tensor's storage address and version counter are not enough: FSDP2 refills a layer's
unsharded parameters by all-gather into reused storage without bumping the version, and a write
through ``param.data`` does not bump it either, so such a key returned stale results after training
steps (measured under ``fully_shard`` on 2 CPU processes: logits off by up to 1e-3). On an accelerator
the comparison would cost a device-to-host synchronisation per call, more than the small matmuls it
saves, so nothing is cached there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def _unchanged(saved: tuple[torch.Tensor, ...], sources: tuple[torch.Tensor, ...]) -> bool:
    pairs = zip(saved, sources, strict=True)
    return all(a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) for a, b in pairs)


class FrozenCache:
    """``get(name, compute, *sources)``: ``compute()``, reused while no gradient is recorded, the sources
    live on the CPU and their values are unchanged."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[torch.Tensor, ...], Any]] = {}
        self.weights_fixed = False
        """Set while nothing can change the weights (a server): entries are reused without comparing values,
        a comparison of ``B`` that cost decoding about 4 us per layer and token."""

    def get(self, name: str, compute: Callable[[], T], *sources: torch.Tensor) -> T:
        if self.weights_fixed and name in self._entries and not torch.is_grad_enabled():
            return self._entries[name][1]  # first: decoding pays for every check, a few microseconds each
        if torch.is_grad_enabled() or any(source.device.type != "cpu" for source in sources):
            return compute()
        entry = self._entries.get(name)
        if entry is None or not (self.weights_fixed or _unchanged(entry[0], sources)):
            entry = (tuple(source.detach().clone() for source in sources), compute())
            self._entries[name] = entry
        return entry[1]
