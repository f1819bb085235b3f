"""Routing statistics gathered while a model runs, for analysis plots and reports.

Per layer: the mean gate weight per expert, how often each expert is a token's top choice,
the routing entropy, and for RadarGate a sample of angles and of the cosine between each
expert's output and its fused partner before and after rotation (the contrastive analysis).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    keep_last_call: bool = False
    """Also keep the last call's per-token weights and extras whole (a server reads each generated token's routing)."""
    last_weights: torch.Tensor | None = None
    """``[T, n]`` float32 gate weights of the last call, when ``keep_last_call``."""
    last_extras: dict[str, torch.Tensor] = field(default_factory=dict)
    """The last call's ``[T, n]`` gate extras (RadarGate: ``theta``, ...), float32, when ``keep_last_call``."""

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
        if self.keep_last_call:
            self.last_weights = weights.float()
            self.last_extras = {name: values.detach().float().cpu() for name, values in output.extras.items()}

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
