"""Auxiliary losses of mixture-of-experts training, computed per layer from a ``GateOutput``.

- ``load_balance`` (Switch / Mixtral): ``n * sum_i f_i P_i`` with ``f_i`` the fraction of routing
  decisions that go to expert ``i`` (the gate's selection, or each token's argmax for dense
  gates) and ``P_i`` the mean router probability; 1 when perfectly balanced.
- ``z_loss`` (ST-MoE): ``mean_t logsumexp(logits_t)^2``; keeps router logits small.
- ``orthogonality`` (seed 003): mean over tokens and expert pairs ``i != j`` of
  ``cos^2(v_i, v_j)``; 0 when experts write to orthogonal directions. Scale-free, so it cannot be
  gamed by shrinking the outputs. Computed from the Gram matrix, no ``[T, n, d_out]`` tensor.
- ``variance`` (seed 003): ``-mean_i Var_t(p_ti)``: minimising it makes each expert's routing
  score vary across tokens, i.e. routing that discriminates between tokens.

Gates without a router (uniform) contribute no router losses.
"""

from __future__ import annotations

import torch

from radargate.experts import LoRAExperts
from radargate.gates.base import GateOutput, upcast

LOSS_NAMES = ("load_balance", "z_loss", "orthogonality", "variance")


def load_balance_loss(probs: torch.Tensor, selected: torch.Tensor | None) -> torch.Tensor:
    """Switch/Mixtral load-balancing loss from router probabilities ``[T, n]``."""
    if selected is None:
        selected = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).bool()
    routed = selected.to(probs.dtype)
    fraction = routed.sum(0) / routed.sum()
    return probs.shape[-1] * (fraction * probs.mean(0)).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(upcast(logits), dim=-1).pow(2).mean()


def orthogonality_loss(gram: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine between distinct experts' outputs, from ``G: [T, n, n]``."""
    n = gram.shape[-1]
    if n == 1:
        return gram.new_zeros(())
    norms_sq = torch.diagonal(gram, dim1=-2, dim2=-1) + 1e-12
    cos_sq = gram.pow(2) / (norms_sq.unsqueeze(-1) * norms_sq.unsqueeze(-2))
    off_diagonal = cos_sq.sum((-2, -1)) - torch.diagonal(cos_sq, dim1=-2, dim2=-1).sum(-1)
    return off_diagonal.mean() / (n * (n - 1))


def variance_loss(probs: torch.Tensor) -> torch.Tensor:
    """Negative variance over tokens of each expert's routing score, averaged over experts."""
    if probs.shape[0] < 2:
        return probs.new_zeros(())
    return -probs.var(dim=0).mean()


def auxiliary_losses(
    output: GateOutput, codes: torch.Tensor, experts: LoRAExperts, names: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """The named losses for one layer call; router losses are skipped for router-less gates."""
    losses: dict[str, torch.Tensor] = {}
    probs = output.router_probs
    for name in names:
        if name == "orthogonality":
            gram = output.gram if output.gram is not None else experts.gram(codes)
            losses[name] = orthogonality_loss(gram)
        elif probs is None:
            continue
        elif name == "load_balance":
            losses[name] = load_balance_loss(probs, output.selected)
        elif name == "z_loss":
            losses[name] = z_loss(output.router_logits)
        elif name == "variance":
            losses[name] = variance_loss(probs)
        else:
            raise ValueError(f"auxiliary loss {name!r} is unknown; choose from {', '.join(LOSS_NAMES)}")
    return losses
