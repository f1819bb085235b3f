"""Reading and writing LoRA adapters in PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``).

Each adapter becomes one expert: its ``lora_A.weight`` (``[r, d_in]``) is the expert's ``A``, and
``lora_B.weight`` (``[d_out, r]``), transposed and rescaled by the ratio of the adapter's scale to
the mixture's ``alpha / r``, is its ``B``, so the expert's output equals the adapter's delta.
Writing is the inverse (``MoLoRAModel.export_experts``): expert ``i`` becomes an adapter with
``lora_A.weight = A_i``, ``lora_B.weight = B_i^T`` and the mixture's ``r`` and ``alpha``. The tensor
names on both ways come from :func:`peft_lora_key`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from radargate.checkpoint import load_tensors, save_tensors
from radargate.files import atomic_write_text, read_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_KEY_PREFIX = "base_model.model."
"""What PEFT puts before a module's name in the tensor names it saves (its wrappers' attribute path)."""
_LORA_KEY = re.compile(
    rf"^(?:{re.escape(PEFT_KEY_PREFIX)})?(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.[^.]+)?\.weight$"
)


def peft_lora_key(module: str, factor: str) -> str:
    """The name PEFT saves LoRA factor ``factor`` (``"A"`` or ``"B"``) of ``module`` under (no adapter name)."""
    return f"{PEFT_KEY_PREFIX}{module}.lora_{factor}.weight"


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
    settings = read_json(config_path)
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


def write_peft_adapter(
    adapter: PeftAdapter,
    *,
    fan_in_fan_out: bool = False,
    task_type: str | None = None,
    base_model_name_or_path: str | None = None,
) -> None:
    """Write ``adapter`` as a PEFT LoRA adapter folder at ``adapter.path`` (``lora_alpha = scaling * r``), each
    file atomically; ``PeftModel.from_pretrained(base, adapter.path)`` loads it. ``fan_in_fan_out``: the
    adapted layers are transformers' GPT-2 ``Conv1D`` (PEFT's flag; the factors' shapes are the same)."""
    from peft import LoraConfig  # the library's one use of PEFT's code: its config, so the file fits its version

    modules = sorted(adapter.factors)
    settings = LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.scaling * adapter.r,
        lora_dropout=0.0,
        target_modules=modules,
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
        task_type=task_type,
        base_model_name_or_path=base_model_name_or_path,
    ).to_dict()
    settings = {key: sorted(value) if isinstance(value, set) else value for key, value in settings.items()}
    tensors = {}
    for module in modules:
        a, b_transposed = adapter.factors[module]
        tensors[peft_lora_key(module, "A")] = a
        tensors[peft_lora_key(module, "B")] = b_transposed.T
    save_tensors(adapter.path / ADAPTER_WEIGHTS, tensors, {"format": "pt"})
    atomic_write_text(adapter.path / ADAPTER_CONFIG, json.dumps(settings, indent=2, sort_keys=True) + "\n")
