"""Routing statistics gathered while a model runs, for analysis plots and reports.

Per layer: the mean gate weight per expert, how often each expert is a token's top choice,
the routing entropy, and for RadarGate a sample of angles and of the cosine between each
expert's output and its fused partner before and after rotation (the contrastive analysis).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from radargate.gates.base import GateOutput

MAX_SAMPLES = 20_000
"""Per-layer cap on stored (token, expert) samples of angles and cosines."""
SAMPLES_PER_CALL = 256
"""Random (token, expert) samples kept per call, so that the samples span many batches."""


@dataclass
class RoutingStats:
    num_experts: int
    tokens: int = 0
    weight_sum: torch.Tensor | None = None
    top_choice_count: torch.Tensor | None = None
    entropy_sum: float = 0.0
    samples: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    sample_count: int = 0
    wants_geometry: ClassVar[bool] = True
    """The layer asks its gate for the per-token geometry statistics (RadarGate's cosines) for these samples."""

    @torch.no_grad()
    def update(self, output: GateOutput) -> None:
        weights = output.weights.detach().double().cpu()
        if self.weight_sum is None:
            self.weight_sum = torch.zeros(self.num_experts, dtype=torch.float64)
            self.top_choice_count = torch.zeros(self.num_experts, dtype=torch.float64)
        self.tokens += weights.shape[0]
        self.weight_sum += weights.sum(0)
        magnitudes = weights.abs()  # the signed gate's coefficients may be negative
        self.top_choice_count += torch.bincount(magnitudes.argmax(-1), minlength=self.num_experts).double()
        share = magnitudes / magnitudes.sum(-1, keepdim=True).clamp_min(1e-12)
        self.entropy_sum += float(-(share * share.clamp_min(1e-12).log()).sum())
        self._keep_samples(output.extras)

    def _keep_samples(self, extras: dict[str, torch.Tensor]) -> None:
        """Keep a random subset of this call's samples, the same positions for every quantity."""
        if not extras:
            return
        room = min(MAX_SAMPLES - self.sample_count, SAMPLES_PER_CALL)
        if room <= 0:
            return
        size = next(iter(extras.values())).numel()
        generator = torch.Generator().manual_seed(self.tokens)
        chosen = torch.randperm(size, generator=generator)[:room]
        self.sample_count += len(chosen)
        for name, values in extras.items():
            self.samples.setdefault(name, []).append(values.detach().float().flatten().cpu()[chosen])

    def summary(self) -> dict[str, object]:
        """Plain values: means per expert, usage shares, entropy, and the stored samples."""
        if not self.tokens:
            return {"tokens": 0}
        result: dict[str, object] = {
            "tokens": self.tokens,
            "mean_weight": (self.weight_sum / self.tokens).tolist(),
            "top_choice_share": (self.top_choice_count / self.tokens).tolist(),
            "mean_entropy": self.entropy_sum / self.tokens,
        }
        for name, chunks in self.samples.items():
            result[name] = torch.cat(chunks).tolist()
        return result


class LastCall:
    """The last call's per-token gate weights and RadarGate's angles, as the gate returned them, and nothing else.

    What a server reads for each generated token. Nothing is accumulated, copied or sampled, and the gate skips
    its geometry statistics (``wants_geometry``): in decoding each of those small ops costs a dispatch per layer
    and token (with :class:`RoutingStats` RadarGate's decoding layer took about twice its time without).
    """

    wants_geometry: ClassVar[bool] = False

    def __init__(self, num_experts: int) -> None:
        self.num_experts = num_experts
        self.weights: torch.Tensor | None = None
        """``[T, n]``: the last call's gate weights (RadarGate: the StretchGate magnitudes)."""
        self.theta: torch.Tensor | None = None
        """``[T, n]``: the last call's rotation angles in radians (RadarGate only)."""

    def update(self, output: GateOutput) -> None:
        self.weights = output.weights.detach()
        theta = output.extras.get("theta")
        self.theta = None if theta is None else theta.detach()
