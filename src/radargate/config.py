"""`MoLoRAConfig`: what a mixture of LoRA experts looks like, validated where it is built.

The config holds only plain values (ints, floats, strings, lists), so it round-trips through
JSON and YAML unchanged; the code resolves strings such as ``gate="radar"`` to classes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radargate.gates import GATES
from radargate.validation import require_bool, require_choice, require_int, require_number

STRETCH_NAMES = ("softmax", "softplus", "topk")
FUSION_NAMES = ("static", "input")
RADAR_IMPLS = ("span", "materialized")
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class MoLoRAConfig:
    """A mixture of ``num_experts`` LoRA experts of rank ``r`` on each target module.

    Every field is checked in ``__post_init__``; a bad value raises ``ValueError`` naming the
    field, the value and what is allowed.
    """

    num_experts: int = 4
    """Number of LoRA experts per adapted layer."""
    r: int = 8
    """Rank of each expert."""
    alpha: float = 16.0
    """LoRA scale numerator: expert outputs are multiplied by ``alpha / r``."""
    dropout: float = 0.0
    """Dropout on the layer input before the experts (the gate sees the undropped input)."""
    target_modules: list[str] | str = field(default_factory=lambda: list(DEFAULT_TARGETS))
    """A list of module names (a module matches if its full name equals an entry or ends with
    ``"." + entry``), or one regular expression that must match the full module name."""
    gate: str = "softmax"
    """Which gate mixes the experts: ``softmax``, ``topk``, ``uniform``, ``signed`` or ``radar``."""
    top_k: int = 2
    """Experts kept per token by the ``topk`` gate (and by RadarGate's ``stretch="topk"``)."""
    topk_renormalize: bool = True
    """``topk``: renormalise the kept weights to sum to 1 (Mixtral/MixLoRA); ``False`` keeps the
    raw softmax probabilities (Switch with ``top_k=1``)."""
    theta_max: float = math.pi / 2
    """RadarGate: rotation angles lie in ``(-theta_max, theta_max)``."""
    stretch: str = "softmax"
    """RadarGate StretchGate: ``softmax`` magnitudes (sum to 1), unnormalised ``softplus``, or ``topk``: the
    top-k gate's weights (the ``top_k`` largest softmax probabilities, renormalised per ``topk_renormalize``)."""
    fusion: str = "static"
    """RadarGate fusion ("Map"): ``static``, one learnable ``Phi = masked_softmax(P)`` shared by all tokens, or
    ``input``, ``Phi(x) = masked_softmax(P + f(z))`` per token with ``f`` linear in the experts' codes and
    started at zero (so training starts where ``static`` does)."""
    radar_impl: str = "span"
    """RadarGate implementation: ``span`` (fast, default) or ``materialized`` (reference)."""
    radar_recompute: bool = True
    """RadarGate ``span``: recompute the per-token rotation math in the backward pass instead of
    storing it (only the ``[T, n, n]`` Gram matrix is kept), so the layer trains in about the memory
    of a weighted-sum gate (a little more time)."""
    train_experts: bool = True
    """``False`` freezes the experts so only the gate trains (the MoLE / X-LoRA way)."""
    load_balance_weight: float = 0.0
    """Weight of the Switch/Mixtral load-balancing loss."""
    z_loss_weight: float = 0.0
    """Weight of the router z-loss (ST-MoE)."""
    orthogonality_weight: float = 0.0
    """Weight of the expert-output orthogonality loss (specialisation, seed 003)."""
    variance_weight: float = 0.0
    """Weight of the routing-score variance loss (specialisation, seed 003)."""

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, Sequence) and not isinstance(self.target_modules, str):
            self.target_modules = list(self.target_modules)
        for check in (
            self._check_sizes,
            self._check_choices,
            self._check_targets,
            self._check_weights,
        ):
            check()

    def _check_sizes(self) -> None:
        require_int("num_experts", self.num_experts, minimum=1)
        require_int("r", self.r, minimum=1)
        require_int("top_k", self.top_k, minimum=1)
        if self.keeps_top_k and self.top_k > self.num_experts:
            raise ValueError(
                f"top_k={self.top_k} is larger than num_experts={self.num_experts}; "
                f"choose 1 <= top_k <= num_experts"
            )
        require_number("alpha", self.alpha, low=0.0, low_inclusive=False)
        require_number("dropout", self.dropout, low=0.0, high=1.0, high_inclusive=False)
        require_number("theta_max", self.theta_max, low=0.0, high=math.pi, low_inclusive=False)

    def _check_choices(self) -> None:
        require_choice("gate", self.gate, tuple(GATES))
        require_choice("stretch", self.stretch, STRETCH_NAMES)
        require_choice("fusion", self.fusion, FUSION_NAMES)
        require_choice("radar_impl", self.radar_impl, RADAR_IMPLS)
        for name in ("topk_renormalize", "train_experts", "radar_recompute"):
            require_bool(name, getattr(self, name))

    def _check_targets(self) -> None:
        targets = self.target_modules
        if isinstance(targets, str):
            try:
                re.compile(targets)
            except re.error as error:
                raise ValueError(
                    f"target_modules={targets!r} is not a valid regular expression ({error}); "
                    "give a regex or a list of module names"
                ) from None
            return
        if not targets or not all(isinstance(name, str) and name for name in targets):
            raise ValueError(
                f"target_modules={targets!r} is not allowed; give a non-empty list of module "
                "names such as ['q_proj', 'v_proj'] or one regular expression"
            )

    def _check_weights(self) -> None:
        for name in ("load_balance_weight", "z_loss_weight", "orthogonality_weight", "variance_weight"):
            require_number(name, getattr(self, name), low=0.0)

    @property
    def keeps_top_k(self) -> bool:
        """Whether the gate keeps only ``top_k`` experts per token (the top-k gate, RadarGate's top-k stretch)."""
        return self.gate == "topk" or (self.gate == "radar" and self.stretch == "topk")

    def aux_loss_weights(self) -> dict[str, float]:
        """Auxiliary loss name -> weight, for the losses that are switched on."""
        weights = {
            "load_balance": self.load_balance_weight,
            "z_loss": self.z_loss_weight,
            "orthogonality": self.orthogonality_weight,
            "variance": self.variance_weight,
        }
        return {name: weight for name, weight in weights.items() if weight > 0}

    @property
    def scaling(self) -> float:
        """The LoRA scale ``alpha / r`` applied to every expert output."""
        return self.alpha / self.r

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MoLoRAConfig:
        """Build from a plain dict; an unknown key is an error naming it (typos must not pass)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown MoLoRAConfig key(s) {unknown}; allowed keys are {sorted(known)}"
            )
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MoLoRAConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_file(cls, path: str | Path) -> MoLoRAConfig:
        return cls.from_json(Path(path).read_text())
