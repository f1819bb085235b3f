"""The experiment harness on top of the library: data, training, evaluation, comparisons, the study, reports.

It uses ``radargate`` as any user would; nothing in the library imports it. One job per module:
``config/`` (the experiment config), ``methods`` (a method name to a model), ``run`` (one run),
``train`` (the training loop), ``routing`` (what a run computes about its routing), ``evaluate``,
``compare``, ``study``, ``report/``, ``data/``, ``loading``, ``bundle/``.
See ``docs/architecture.md``.
"""

from __future__ import annotations

from radargate.experiment.config import (
    BASELINES,
    CompareSettings,
    DataSettings,
    EvalSettings,
    ExperimentConfig,
    ModelSettings,
    StudySettings,
    TrainSettings,
    method_names,
)

__all__ = [
    "BASELINES",
    "CompareSettings",
    "DataSettings",
    "EvalSettings",
    "ExperimentConfig",
    "ModelSettings",
    "StudySettings",
    "TrainSettings",
    "method_names",
]
