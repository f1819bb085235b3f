"""Uniform gate (rule-based averaging): every expert weighs ``1 / n``; nothing to learn."""

from __future__ import annotations

import torch

from radargate.experts import LoRAExperts
from radargate.gates.base import Gate, GateOutput


class UniformGate(Gate):
    def forward(
        self, tokens: torch.Tensor, codes: torch.Tensor, experts: LoRAExperts, *, with_stats: bool = False
    ) -> GateOutput:
        weights = torch.full(codes.shape[:2], 1.0 / self.num_experts, dtype=codes.dtype, device=codes.device)
        return GateOutput(delta=experts.mix(codes, weights), weights=weights)
