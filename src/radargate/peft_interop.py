"""Reading LoRA adapters saved by PEFT (``adapter_config.json`` + ``adapter_model.safetensors``).

Each adapter becomes one expert: its ``lora_A.weight`` (``[r, d_in]``) is the expert's ``A``, and
``lora_B.weight`` (``[d_out, r]``), transposed and rescaled by the ratio of the adapter's scale to
the mixture's ``alpha / r``, is its ``B``, so the expert's output equals the adapter's delta.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from radargate.checkpoint import load_tensors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class PeftAdapter:
    """One PEFT LoRA adapter: its settings and its factors per module name."""

    path: Path
    r: int
    scaling: float
    target_modules: list[str] | str
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    """module name -> (``A: [r, d_in]``, ``B^T: [r, d_out]``)."""


def read_peft_adapter(path: str | Path) -> PeftAdapter:
    """Read an adapter folder; errors name the missing file or the unsupported setting."""
    path = Path(path)
    config_path = path / ADAPTER_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a PEFT adapter folder: {ADAPTER_CONFIG} is missing")
    settings = json.loads(config_path.read_text())
    if settings.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"adapter {path} has peft_type={settings['peft_type']!r}; only LORA adapters can be experts")
    if settings.get("rank_pattern") or settings.get("alpha_pattern"):
        raise ValueError(f"adapter {path} uses rank_pattern/alpha_pattern; per-module ranks are not supported")
    r, alpha = int(settings["r"]), float(settings["lora_alpha"])
    scaling = alpha / math.sqrt(r) if settings.get("use_rslora") else alpha / r
    tensors, _ = load_tensors(path / ADAPTER_WEIGHTS)
    return PeftAdapter(
        path=path,
        r=r,
        scaling=scaling,
        target_modules=settings.get("target_modules") or [],
        factors=_factors_by_module(tensors, path),
    )


def _factors_by_module(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _LORA_KEY.match(key)
        if match:
            found.setdefault(match["module"], {})[match["factor"]] = tensor
    incomplete = [module for module, pair in found.items() if set(pair) != {"A", "B"}]
    if incomplete or not found:
        raise ValueError(f"adapter {path} has no complete lora_A/lora_B pair for modules {incomplete or 'any'}")
    return {module: (pair["A"], pair["B"].T) for module, pair in found.items()}
