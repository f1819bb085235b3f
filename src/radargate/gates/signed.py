"""Signed gate: the premise alone, a mixture that leaves the convex cone without rotating anything.

``y = x W0 + sum_i c_i(x) v_i`` with ``c(x) = x W_c + b_c``: real coefficients, no normalisation and no
sign constraint, so the output reaches the whole span of the expert outputs, not only their convex cone.
The paper blames the cone for weighted-sum gates' underfitting; if this gate matches or beats RadarGate,
leaving the cone, not rotating, is where any gain comes from.

It starts as the uniform average (``W_c = 0``, ``b_c = 1/n``). All-zero coefficients would be a saddle:
with ``B = 0`` too, ``dL/dB_i`` is proportional to ``c_i`` and ``dL/dc_i = <dL/dy, v_i>`` to ``v_i = 0``,
so neither would ever move. ``weights`` in its output are the signed coefficients; it has no router, so
the router losses (load balance, z-loss, variance) do not apply to it.
"""

from __future__ import annotations

import torch
from torch import nn

from radargate.experts import LoRAExperts
from radargate.gates.base import Gate, GateOutput, upcast


class SignedGate(Gate):
    def __init__(self, *, config, in_features, dtype=None, device=None) -> None:
        super().__init__(config=config, in_features=in_features, dtype=dtype, device=device)
        self.coefficients = nn.Linear(in_features, config.num_experts, dtype=dtype, device=device)
        with torch.no_grad():
            self.coefficients.weight.zero_()
            self.coefficients.bias.fill_(1.0 / config.num_experts)

    def forward(
        self, tokens: torch.Tensor, codes: torch.Tensor, experts: LoRAExperts, *, with_stats: bool = False
    ) -> GateOutput:
        weights = upcast(self.coefficients(tokens))
        return GateOutput(delta=experts.mix(codes, weights.to(codes.dtype)), weights=weights)
