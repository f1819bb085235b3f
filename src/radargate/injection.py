"""Model surgery: find the target linear layers of any ``nn.Module`` and swap in mixtures."""

from __future__ import annotations

import re

from torch import nn

from radargate.config import MoLoRAConfig
from radargate.layer import SUPPORTED_LAYERS, MoLoRALinear


def matches_target(name: str, targets: list[str] | str) -> bool:
    """PEFT's rule: a regex must match the whole name; a list entry must equal the name or end it."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == target or name.endswith("." + target) for target in targets)


def linear_layer_names(model: nn.Module) -> list[str]:
    """Names of every layer experts could be attached to (shown when nothing matched)."""
    return [name for name, module in model.named_modules() if isinstance(module, SUPPORTED_LAYERS)]


def find_targets(model: nn.Module, targets: list[str] | str) -> list[str]:
    """Names of the modules to adapt; an error lists candidates when none match."""
    names = []
    for name, module in model.named_modules():
        if not name or not matches_target(name, targets):
            continue
        if isinstance(module, MoLoRALinear):
            raise ValueError(f"module {name!r} already carries experts; attach experts only once")
        if not isinstance(module, SUPPORTED_LAYERS):
            if any(isinstance(child, SUPPORTED_LAYERS) for child in module.children()):
                continue  # a container whose name matches, e.g. a regex hitting "mlp"
            raise ValueError(
                f"target_modules matched {name!r}, a {type(module).__name__}; only nn.Linear (bitsandbytes' "
                "quantized linears included) and transformers' Conv1D layers can carry experts"
            )
        names.append(name)
    if not names:
        candidates = sorted({name.rsplit(".", 1)[-1] for name in linear_layer_names(model)})
        raise ValueError(
            f"target_modules={targets!r} matched no module of {type(model).__name__}; "
            f"linear layers it has are named: {', '.join(candidates[:20]) or '(none)'}"
        )
    return names


def attach_experts(model: nn.Module, config: MoLoRAConfig) -> dict[str, MoLoRALinear]:
    """Replace every target layer by a ``MoLoRALinear`` wrapping it, in place."""
    layers = {}
    for name in find_targets(model, config.target_modules):
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = MoLoRALinear(getattr(parent, child_name), config)
        setattr(parent, child_name, layer)
        layers[name] = layer
    return layers
