"""The experiment harness on top of the library: data, training, evaluation, comparisons, the study, reports.

It uses ``radargate`` as any user would; nothing in the library imports it. One job per module:
``config/`` (the experiment config), ``methods`` (a method name to a model), ``loading`` (the base model),
``quantization``, ``data/``, ``run`` (one run), ``train`` (the training loop), ``tracking``, ``routing`` (what a
run computes about its routing), ``evaluate``, ``harness`` (lm-evaluation-harness), ``compare``, ``cells``,
``plan``, ``study`` and ``robustness`` (the study and its robustness protocol), ``report/``, ``export`` and
``model_card`` (what a trained run hands on), ``bundle/`` (offline bundles).
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
