"""Top-k gate (MixLoRA / Mixtral; Switch with ``top_k=1``): each token uses its k best experts.

Weights are the softmax probabilities of the kept experts, renormalised to sum to 1 unless
``topk_renormalize=False`` (Switch keeps the raw probability so the router gets a gradient
from the task loss even with one expert).
"""

from __future__ import annotations

import torch

from radargate.experts import LoRAExperts
from radargate.gates.base import Gate, GateOutput, make_router, upcast


class TopKGate(Gate):
    def __init__(self, *, config, in_features, dtype=None, device=None) -> None:
        super().__init__(config=config, in_features=in_features, dtype=dtype, device=device)
        self.top_k = config.top_k
        self.renormalize = config.topk_renormalize
        self.router = make_router(in_features, config.num_experts, dtype, device)

    def forward(
        self, tokens: torch.Tensor, codes: torch.Tensor, experts: LoRAExperts, *, with_stats: bool = False
    ) -> GateOutput:
        logits = self.router(tokens)
        probs = upcast(logits).softmax(dim=-1)
        kept = probs.topk(self.top_k, dim=-1).indices
        selected = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, kept, True)
        weights = probs * selected
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        delta = experts.mix(codes, weights.to(codes.dtype))
        return GateOutput(delta=delta, weights=weights, router_logits=logits, selected=selected)
