"""The method names a config may hold: the baselines, every gate of the registry, the readings of RadarGate.

A new method that is not a gate adds its name to ``BASELINES``; a new reading, its adapter settings to
``READINGS``; a new gate is a method by being in ``GATES``.
"""

from __future__ import annotations

from radargate.gates import GATES

BASELINES = ("base", "lora")
"""Methods besides the gates: the untrained model, and PEFT's LoRA at rank ``num_experts * r``."""
READINGS: dict[str, dict[str, str]] = {
    "radar-sparse": {"stretch": "topk"},
    "radar-fusion": {"fusion": "input"},
    "radar-softplus": {"stretch": "softplus"},
}
"""Other readings of RadarGate's abstract (``docs/radargate.md``), each a method of its own so that runs, cell files
and tables tell them apart: the ``radar`` gate with these adapter settings (``radar`` itself is the default reading)."""


DEFAULT_READING: dict[str, str] = {"stretch": "softmax", "fusion": "static"}
"""The settings of ``radar`` itself, the default reading: every reading sets all of these keys, so switching
methods (``ExperimentConfig.for_method``) never carries one reading's setting into another."""


def reading_settings(method: str) -> dict[str, str]:
    """The adapter settings a method fixes besides its gate: all of ``DEFAULT_READING`` for ``radar`` and its
    readings, nothing for the other methods."""
    return {**DEFAULT_READING, **READINGS.get(method, {})} if gate_of(method) == "radar" else {}


def method_names() -> tuple[str, ...]:
    """Every method a run may train: the baselines, the gates, the readings."""
    return (*BASELINES, *GATES, *READINGS)


def gate_of(method: str) -> str | None:
    """The gate a method trains (a reading trains ``radar``); ``None`` for the baselines."""
    return "radar" if method in READINGS else method if method in GATES else None

