"""Checkpoint files written atomically and read with clear errors.

A mixture checkpoint is a folder with ``molora_model.safetensors`` (the adapter tensors, with the
config JSON in the file's metadata, so the one file is self-describing) and ``molora_config.json``
(the same config, for people). Each file is written to a temporary name in the same folder,
flushed to disk and renamed over the old one, so a crash mid-save leaves the old file intact;
the weights file is the one the loader trusts.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from radargate.files import atomic_write

WEIGHTS_NAME = "molora_model.safetensors"
CONFIG_NAME = "molora_config.json"
CONFIG_METADATA_KEY = "molora_config"


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Atomically write ``tensors`` (made contiguous, on the CPU) as safetensors."""
    cpu = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file; a missing, truncated or corrupt file gives a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as reader:
            metadata = reader.metadata() or {}
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(
            f"checkpoint file {path} is truncated or corrupt ({error}); re-save it or pick another"
        ) from None
    return tensors, metadata
