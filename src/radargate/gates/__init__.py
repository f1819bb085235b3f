"""Gate registry: a gate is one file in this package plus one line in ``GATES``."""

from __future__ import annotations

from radargate.gates.base import Gate, GateOutput, GateSettings
from radargate.gates.radar import RadarGate
from radargate.gates.signed import SignedGate
from radargate.gates.softmax import SoftmaxGate
from radargate.gates.topk import TopKGate
from radargate.gates.uniform import UniformGate

GATES: dict[str, type[Gate]] = {
    "softmax": SoftmaxGate,
    "topk": TopKGate,
    "uniform": UniformGate,
    "signed": SignedGate,
    "radar": RadarGate,
}


def get_gate(name: str) -> type[Gate]:
    """The gate class registered as ``name``."""
    try:
        return GATES[name]
    except KeyError:
        raise ValueError(f"gate={name!r} is unknown; choose one of {', '.join(GATES)}") from None


__all__ = [
    "GATES", "Gate", "GateOutput", "GateSettings", "RadarGate", "SignedGate", "SoftmaxGate", "TopKGate", "UniformGate",
    "get_gate",
]
