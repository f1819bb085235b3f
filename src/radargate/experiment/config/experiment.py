"""`ExperimentConfig`: the whole config, one field per section, and the rule that the method names the gate."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from radargate.config import MoLoRAConfig
from radargate.experiment.config.data import DataSettings
from radargate.experiment.config.model import ModelSettings
from radargate.experiment.config.names import READINGS, gate_of, method_names, reading_settings
from radargate.experiment.config.parsing import apply_override, build, parse_yaml
from radargate.experiment.config.study import CompareSettings, StudySettings
from radargate.experiment.config.train import EvalSettings, TrainSettings
from radargate.validation import require_choice

PACKAGE_ONLY_SETTINGS = ("task", "config", "size", "seed")
"""``SourceSettings`` fields that only packaged data sets read (left out of ``to_dict`` when empty)."""


@dataclass
class ExperimentConfig:
    """Everything a run, a comparison or a study is made from: one field per section."""

    name: str = "run"
    """Results go to ``<output_dir>/<name>/``."""
    output_dir: str = "runs"
    """The folder that holds the run folders."""
    method: str = "radar"
    """What ``radargate train`` trains: ``lora``, ``base`` (nothing), a gate name, or a reading of RadarGate
    (``READINGS``). The one source of truth for the gate: ``adapter.gate`` (and a reading's settings) follow
    it and may only repeat it."""
    model: ModelSettings = field(default_factory=ModelSettings)
    """The base model: which, in which dtype, quantized or not."""
    data: DataSettings = field(default_factory=DataSettings)
    """What the run trains and is scored on: BIG-bench tasks or your own sources, their splits and caps."""
    adapter: MoLoRAConfig = field(default_factory=MoLoRAConfig)
    """The mixture of LoRA experts (the library's ``MoLoRAConfig``); ``method`` sets its gate."""
    train: TrainSettings = field(default_factory=TrainSettings)
    """How one run trains."""
    eval: EvalSettings = field(default_factory=EvalSettings)
    """How a run is scored after training."""
    compare: CompareSettings = field(default_factory=CompareSettings)
    """The methods ``radargate compare`` runs side by side."""
    study: StudySettings = field(default_factory=StudySettings)
    """The scaling sweep of ``radargate study``."""

    def __post_init__(self) -> None:
        require_choice("method", self.method, method_names())
        if not self.name or "/" in self.name:
            raise ValueError(f"name={self.name!r} is not allowed; use a non-empty name without '/'")
        gate = gate_of(self.method)
        if gate is not None:
            settings = {"gate": gate, **reading_settings(self.method)}
            if any(getattr(self.adapter, key) != value for key, value in settings.items()):
                self.adapter = dataclasses.replace(self.adapter, **settings)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def for_method(self, method: str) -> ExperimentConfig:
        """The same experiment training ``method`` (a gate method also sets ``adapter.gate``)."""
        return dataclasses.replace(self, method=method)

    def to_dict(self) -> dict[str, Any]:
        """Plain values; ``adapter.gate`` only where the method has a gate (PEFT's LoRA has none), and settings
        added for generated data (``study.unseen_sources``, a source's ``task``, ``config``, ``size``, ``seed``)
        only where set, so configs and reports written before them read the same."""
        values = dataclasses.asdict(self)
        if gate_of(self.method) is None:
            del values["adapter"]["gate"]
        if not values["study"]["unseen_sources"]:
            del values["study"]["unseen_sources"]
        for source in [*values["data"]["sources"], *values["study"].get("unseen_sources", [])]:
            for key in PACKAGE_ONLY_SETTINGS:
                if source[key] in ("", {}, None):
                    del source[key]
        return values

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        """Build from plain values, YAML text scalars included; see the module docstring."""
        return build(cls, _with_gate_from_method(values), prefix="")

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
        """Read a YAML file (or start from the defaults) and apply ``key.sub=value`` overrides."""
        values: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"config file {path} does not exist")
            values = parse_yaml(path.read_text(), f"config file {path}") or {}
            if not isinstance(values, dict):
                raise ValueError(f"config file {path} must hold a mapping of settings, not {type(values).__name__}")
        for override in overrides:
            apply_override(values, override)
        return cls.from_dict(values)


def _with_gate_from_method(values: dict[str, Any]) -> dict[str, Any]:
    """``adapter.gate`` (and a reading's own settings, such as ``stretch``) may repeat what ``method`` implies but
    never contradict it; the adapter is built with the method's gate, so its own checks (``top_k <= num_experts``
    for top-k) see the gate that will run."""
    adapter = values.get("adapter", {})
    method = values.get("method", ExperimentConfig.method)
    if not isinstance(adapter, dict) or not isinstance(method, str):
        return values  # the typed build names the bad value
    gate = gate_of(method)
    if "gate" in adapter and adapter["gate"] != gate:
        if gate is None:
            raise ValueError(
                f"adapter.gate={adapter['gate']!r} does not apply to method={method!r}, which has no gate; "
                "drop adapter.gate (the method names what a run trains)"
            )
        raise ValueError(
            f"adapter.gate={adapter['gate']!r} contradicts method={method!r}; the method names what a run "
            f"trains (a gate, a reading of radar, lora or base): set method: {adapter['gate']} and drop adapter.gate"
        )
    implied = reading_settings(method)
    for key, value in implied.items():
        if key in adapter and adapter[key] != value:
            raise ValueError(f"adapter.{key}={adapter[key]!r} contradicts method={method!r}, which is the radar gate "
                             f"with {key}={value!r}; drop adapter.{key}{_reading_hint(key, adapter[key])}")
    return {**values, "adapter": {**adapter, "gate": gate, **implied}} if gate is not None else values


def _reading_hint(key: str, value: object) -> str:
    """Where a method of its own has the setting a config asked for, say which."""
    methods = [method for method in ("radar", *READINGS) if reading_settings(method)[key] == value]
    return f" or set method: {' or '.join(methods)}" if methods else ""
