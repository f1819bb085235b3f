"""Building single mixture layers for the numerical tests."""

from __future__ import annotations

import torch
from torch import nn

from radargate import MoLoRAConfig
from radargate.layer import MoLoRALinear
from tests.conftest import randomize_adapters


def make_layer(
    generator: torch.Generator,
    *,
    d_in: int = 10,
    d_out: int = 7,
    dtype: torch.dtype = torch.float64,
    randomize: bool = True,
    **config_values,
) -> MoLoRALinear:
    """A mixture layer on a random base ``nn.Linear``, all adapter tensors random."""
    config = MoLoRAConfig(**{"num_experts": 4, "r": 3, "alpha": 6.0, "target_modules": ["base"], **config_values})
    base = nn.Linear(d_in, d_out, dtype=dtype)
    with torch.no_grad():
        base.weight.copy_(torch.randn(base.weight.shape, generator=generator, dtype=dtype))
        base.bias.copy_(torch.randn(base.bias.shape, generator=generator, dtype=dtype))
    layer = MoLoRALinear(base, config)
    if randomize:
        wrapper = nn.Module()
        wrapper.layer = layer
        randomize_adapters(wrapper, generator)
    return layer


def copy_adapters(source: MoLoRALinear, target: MoLoRALinear) -> None:
    """Give ``target`` the same experts and router (and base layer) as ``source``."""
    with torch.no_grad():
        target.base_layer.load_state_dict(source.base_layer.state_dict())
        target.experts.load_state_dict(source.experts.state_dict())
        target.gate.router.load_state_dict(source.gate.router.state_dict())


def random_input(generator: torch.Generator, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=dtype)
