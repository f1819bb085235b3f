"""`ExperimentConfig`: one run's model, data, adapter, training and comparison settings.

Loaded from YAML (``configs/*.yaml``) with command-line overrides such as
``--set train.steps=50``; every section is a typed dataclass that checks its values, and an
unknown or misspelt key is an error naming it and the allowed keys.

One module per kind of section: ``model`` (model, model.quantization), ``data`` (data, data.sources),
``train`` (train, eval), ``study`` (compare, study, study.robustness); ``names`` holds the method names,
``experiment`` the config that holds every section, ``parsing`` how YAML text becomes typed values.
"""

from __future__ import annotations

from radargate.experiment.config.data import DataSettings, SourceSettings
from radargate.experiment.config.experiment import ExperimentConfig
from radargate.experiment.config.model import ModelSettings, QuantizationSettings
from radargate.experiment.config.names import BASELINES, READINGS, gate_of, method_names
from radargate.experiment.config.study import CompareSettings, RobustnessSettings, StudySettings
from radargate.experiment.config.train import EvalSettings, TrainSettings

__all__ = [
    "BASELINES", "READINGS", "CompareSettings", "DataSettings", "EvalSettings", "ExperimentConfig", "ModelSettings",
    "QuantizationSettings", "RobustnessSettings", "SourceSettings", "StudySettings", "TrainSettings", "gate_of",
    "method_names",
]
