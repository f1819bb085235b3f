"""Adapter parameters that torch's FSDP2 (``fully_shard``) has split into ``DTensor`` shards, one per process:
gathered whole to be saved, and cut back into each process's shard to be loaded. Plain tensors pass through.

Gathering is a collective: under FSDP2 every process must take part in a save, and only one may write
(``is_main_process``), or the processes either wait on each other forever or race on the same file.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor: gathered from every process's shard (a collective) when ``tensor`` is a ``DTensor``."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def copy_whole_into(target: torch.Tensor, value: torch.Tensor) -> None:
    """``target.copy_(value)`` for a full ``value``: a sharded ``target`` takes its own shard of it (every process
    holds the same ``value``, read from the same file, so nothing is sent)."""
    if isinstance(target, DTensor):
        value = distribute_tensor(value.to(target.device), target.device_mesh, target.placements, src_data_rank=None)
    target.copy_(value)


def is_main_process() -> bool:
    """Process 0 of a ``torch.distributed`` job, or the only process."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
