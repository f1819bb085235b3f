"""Dense softmax gate (MoLE / X-LoRA): ``y = sum_i softmax(x W_g + b_g)_i v_i``."""

from __future__ import annotations

import torch

from radargate.experts import LoRAExperts
from radargate.gates.base import Gate, GateOutput, make_router, upcast


class SoftmaxGate(Gate):
    def __init__(self, *, config, in_features, dtype=None, device=None) -> None:
        super().__init__(config=config, in_features=in_features, dtype=dtype, device=device)
        self.router = make_router(in_features, config.num_experts, dtype, device)

    def forward(
        self, tokens: torch.Tensor, codes: torch.Tensor, experts: LoRAExperts, *, with_stats: bool = False
    ) -> GateOutput:
        logits = self.router(tokens)
        weights = upcast(logits).softmax(dim=-1)
        delta = experts.mix(codes, weights.to(codes.dtype))
        return GateOutput(delta=delta, weights=weights, router_logits=logits)
