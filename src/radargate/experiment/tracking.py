"""Experiment trackers (TensorBoard, W&B, MLflow, ... through accelerate) for the training loop.

Off unless ``train.report_to`` names trackers. Each step logs what a practitioner watches on a dashboard:
the loss and its parts (the language-model loss and each auxiliary loss), the gradient norm, the learning
rate, throughput, and each mixture layer's routing entropy (a collapsing router shows up there first).
Everything goes under ``<run>/tracking/``.
"""

from __future__ import annotations

from typing import Any

from accelerate import Accelerator
from accelerate.tracking import get_available_trackers

from radargate.experiment.config import ExperimentConfig
from radargate.stats import RoutingStats

EXTRAS = {"tensorboard": "tracking"}
"""The radargate extra that installs a tracker's package, where there is one."""


def start_trackers(accelerator: Accelerator, config: ExperimentConfig) -> None:
    """Initialise ``config.train.report_to``'s trackers, refusing any whose package is missing
    (accelerate would drop it silently, and the user would find an empty dashboard after the run)."""
    available = {str(tracker) for tracker in get_available_trackers()}
    missing = [name for name in config.train.report_to if name not in available]
    if missing:
        hints = ", ".join(f"pip install 'radargate[{EXTRAS[name]}]'" if name in EXTRAS else f"pip install {name}"
                          for name in missing)
        raise ValueError(f"train.report_to={config.train.report_to} names trackers that are not installed: "
                         f"{', '.join(missing)} ({hints})")
    accelerator.init_trackers(config.name, config=hyperparameters(config.to_dict()))


def hyperparameters(values: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str | None]:
    """The config flattened to ``section/key: scalar`` (lists as text): what every tracker accepts."""
    flat: dict[str, bool | int | float | str | None] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(hyperparameters(value, prefix=f"{name}/"))
        else:
            flat[name] = value if value is None or isinstance(value, bool | int | float | str) else str(value)
    return flat


def step_metrics(row: dict[str, Any], tokens_per_s: float, routing: dict[str, RoutingStats]) -> dict[str, float]:
    """One step's scalars from its log row and the routing statistics gathered during it."""
    metrics = {name: row[name] for name in ("loss", "lm_loss", "grad_norm", "lr") if row.get(name) is not None}
    metrics |= {f"aux/{name}": value for name, value in row.get("aux_losses", {}).items()}
    metrics["tokens_per_s"] = tokens_per_s
    for layer, stats in routing.items():
        if stats.tokens:
            metrics[f"routing_entropy/{layer}"] = stats.entropy_sum / stats.tokens
    return metrics
