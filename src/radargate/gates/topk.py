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
        weights, selected = top_k_weights(logits, self.top_k, renormalize=self.renormalize)
        delta = experts.mix(codes, weights.to(codes.dtype))
        return GateOutput(delta=delta, weights=weights, router_logits=logits, selected=selected)


def top_k_weights(logits: torch.Tensor, k: int, *, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k gate's weights ``[T, n]`` (zero outside each token's ``k`` most probable experts) and which
    experts were kept (``[T, n]`` bool); shared with RadarGate's top-k StretchGate."""
    probs = upcast(logits).softmax(dim=-1)
    kept = probs.topk(k, dim=-1).indices
    selected = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, kept, True)
    weights = probs * selected
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, selected
