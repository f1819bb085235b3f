"""The gate interface: how a layer asks a gate to mix its experts.

A gate receives the layer input (``tokens: [T, d_in]``), every expert's low-rank code
(``codes: [T, n, r]``) and the stacked experts, and returns a :class:`GateOutput` whose
``delta`` (``[T, d_out]``) is added to the frozen base layer's output. Gates that only weight
the experts (softmax, top-k, uniform) hand the weights to ``experts.mix``, one matmul; the
rest of ``GateOutput`` feeds the auxiliary losses and the routing statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from radargate.experts import LoRAExperts
from radargate.precision import float32_if_half


class GateSettings(Protocol):
    """The settings a gate is built from: what the gates read of :class:`~radargate.MoLoRAConfig`, which has them all.

    Gates are typed against this, not the config class, so that imports run one way: ``config.py`` checks
    ``gate`` against the registry (``GATES``), and no gate knows the config. A gate reading a new setting
    names it here too.
    """

    num_experts: int
    r: int
    top_k: int
    topk_renormalize: bool
    theta_max: float
    stretch: str
    fusion: str
    radar_impl: str
    radar_recompute: bool


@dataclass
class GateOutput:
    """What one gate call produced, for the layer, the auxiliary losses and the statistics."""

    delta: torch.Tensor
    """``[T, d_out]``: the mixture's contribution to the layer output."""
    weights: torch.Tensor
    """``[T, n]``: the weight each expert gets (RadarGate: the StretchGate magnitudes)."""
    router_logits: torch.Tensor | None = None
    """``[T, n]``: pre-softmax router scores; ``None`` for gates without a router."""
    selected: torch.Tensor | None = None
    """``[T, n]`` bool: experts the token was routed to; ``None`` means dense (all)."""
    gram: torch.Tensor | None = None
    """``[T, n, n]``: ``<v_i, v_j>`` when the gate computed it anyway (reused by the losses)."""
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    """Gate-specific ``[T, n]`` statistics: RadarGate's angles always, its cosines when asked for."""

    @property
    def router_probs(self) -> torch.Tensor | None:
        return None if self.router_logits is None else upcast(self.router_logits).softmax(dim=-1)


class Gate(nn.Module):
    """Base class of every gate; subclasses implement :meth:`forward`.

    Constructed keyword-only from the config (any :class:`GateSettings`) and the layer's input width, so
    that a new gate is one file plus one registry line.
    """

    def __init__(
        self,
        *,
        config: GateSettings,
        in_features: int,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.num_experts = config.num_experts

    def forward(
        self,
        tokens: torch.Tensor,
        codes: torch.Tensor,
        experts: LoRAExperts,
        *,
        with_stats: bool = False,
    ) -> GateOutput:
        raise NotImplementedError


def make_router(
    in_features: int, num_experts: int, dtype: torch.dtype | None, device: torch.device | None
) -> nn.Linear:
    """The token router ``x W_g + b_g``: small random weights (HF's ``initializer_range``) so
    that top-k routing does not start from ties, zero bias."""
    router = nn.Linear(in_features, num_experts, dtype=dtype, device=device)
    with torch.no_grad():
        router.weight.normal_(0.0, 0.02)
        router.bias.zero_()
    return router


def upcast(tensor: torch.Tensor) -> torch.Tensor:
    """Routing math runs in at least float32 (half precision loses small weight differences)."""
    return tensor.to(float32_if_half(tensor.dtype))
