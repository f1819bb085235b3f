"""`ExperimentConfig`: one run's model, data, adapter, training and comparison settings.

Loaded from YAML (``configs/*.yaml``) with command-line overrides such as
``--set train.steps=50``; every section is a typed dataclass that checks its values, and an
unknown or misspelt key is an error naming it and the allowed keys.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from radargate.config import MoLoRAConfig
from radargate.data.bigbench import DEFAULT_SUITE
from radargate.gates import GATES
from radargate.loading import DEFAULT_MODEL
from radargate.validation import require_choice, require_int, require_number

BASELINES = ("base", "lora")
"""Methods besides the gates: the untrained model, and PEFT's LoRA at rank ``num_experts * r``."""
PRECISIONS = ("auto", "no", "bf16", "fp16")
DTYPES = ("float32", "bfloat16", "float16")


def method_names() -> tuple[str, ...]:
    return (*BASELINES, *GATES)


@dataclass
class ModelSettings:
    name: str = DEFAULT_MODEL
    """The default alias (SmolLM2-135M-Instruct, offline), or any transformers name or path."""
    dtype: str = "float32"
    """Weights' dtype when loaded; mixed precision is ``train.precision``."""

    def __post_init__(self) -> None:
        require_choice("model.dtype", self.dtype, DTYPES)


@dataclass
class DataSettings:
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_SUITE))
    """BIG-bench multiple-choice tasks (``task`` or ``task/subtask``)."""
    split_seed: int = 0
    """Seed of the content-hash splits (``radargate.data.bigbench``)."""
    max_train_per_task: int | None = 1000
    max_validation_per_task: int | None = 50
    max_test_per_task: int | None = 100
    max_length: int = 256
    """Longest tokenised prompt + answer; longer prompts lose their beginning."""

    def __post_init__(self) -> None:
        if not self.tasks or not all(isinstance(task, str) for task in self.tasks):
            raise ValueError(f"data.tasks={self.tasks!r} is not allowed; give a non-empty list of task names")
        for name in ("max_train_per_task", "max_validation_per_task", "max_test_per_task"):
            if getattr(self, name) is not None:
                require_int(f"data.{name}", getattr(self, name), minimum=1)
        require_int("data.max_length", self.max_length, minimum=8)

    @property
    def caps(self) -> dict[str, int | None]:
        return {
            "train": self.max_train_per_task,
            "validation": self.max_validation_per_task,
            "test": self.max_test_per_task,
        }


@dataclass
class TrainSettings:
    steps: int = 200
    """Optimizer steps."""
    batch_size: int = 8
    """Sequences per device per micro-batch."""
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    precision: str = "auto"
    """``auto``: bf16 autocast on a GPU that supports it, else full precision; or ``no``/``bf16``/``fp16``."""
    seed: int = 0
    eval_every: int = 0
    """Validation accuracy every this many steps (0: only at the end)."""
    save_every: int = 50
    """Checkpoint every this many steps (and at the end); a killed run resumes from the last one."""
    compile: bool = False
    """``torch.compile`` each mixture layer (dynamic shapes). Pays on GPUs; on CPUs it measured slower."""

    def __post_init__(self) -> None:
        if not isinstance(self.compile, bool):
            raise ValueError(f"train.compile={self.compile!r} is not allowed; use true or false")
        for name in ("steps", "batch_size", "grad_accum", "save_every"):
            require_int(f"train.{name}", getattr(self, name), minimum=1)
        for name in ("warmup_steps", "eval_every", "seed"):
            require_int(f"train.{name}", getattr(self, name), minimum=0)
        require_number("train.lr", self.lr, low=0.0, low_inclusive=False)
        require_number("train.weight_decay", self.weight_decay, low=0.0)
        require_number("train.max_grad_norm", self.max_grad_norm, low=0.0, low_inclusive=False)
        require_choice("train.precision", self.precision, PRECISIONS)


@dataclass
class EvalSettings:
    batch_size: int = 16
    """Sequences (prompt + one choice) per forward pass."""

    def __post_init__(self) -> None:
        require_int("eval.batch_size", self.batch_size, minimum=1)


@dataclass
class CompareSettings:
    methods: list[str] = field(default_factory=lambda: ["lora", "softmax", "radar"])

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("compare.methods=[] is not allowed; name at least one method")
        for method in self.methods:
            require_choice("compare.methods", method, method_names())


STUDY_AXES = ("fixed_r", "fixed_total_rank")
UNSEEN_TASKS = ["navigate", "causal_judgment", "disambiguation_qa", "hyperbaton", "snarks", "movie_recommendation"]
"""BIG-bench multiple-choice tasks outside the training suite, for zero-shot generalisation."""


@dataclass
class StudySettings:
    """The scaling sweep of ``radargate study``: every method x experts x seed cell, per axis."""

    methods: list[str] = field(default_factory=lambda: ["lora", "softmax", "topk", "radar"])
    experts: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    axes: list[str] = field(default_factory=lambda: ["fixed_r"])
    """``fixed_r``: each expert keeps ``adapter.r``; ``fixed_total_rank``: ``r = total_rank / n``."""
    total_rank: int = 32
    unseen_tasks: list[str] = field(default_factory=lambda: list(UNSEEN_TASKS))
    max_unseen_per_task: int = 50
    report_dir: str = "reports"

    def __post_init__(self) -> None:
        for method in self.methods:
            require_choice("study.methods", method, method_names())
        for axis in self.axes:
            require_choice("study.axes", axis, STUDY_AXES)
        for n in self.experts:
            require_int("study.experts", n, minimum=1)
        for seed in self.seeds:
            require_int("study.seeds", seed, minimum=0)
        if not (self.methods and self.experts and self.seeds and self.axes):
            raise ValueError("study.methods, study.experts, study.seeds and study.axes must not be empty")
        require_int("study.total_rank", self.total_rank, minimum=1)
        require_int("study.max_unseen_per_task", self.max_unseen_per_task, minimum=1)


@dataclass
class ExperimentConfig:
    name: str = "run"
    """Results go to ``<output_dir>/<name>/``."""
    output_dir: str = "runs"
    method: str = "radar"
    """What ``radargate train`` trains: ``lora``, ``base`` (nothing), or a gate name."""
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    adapter: MoLoRAConfig = field(default_factory=MoLoRAConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    compare: CompareSettings = field(default_factory=CompareSettings)
    study: StudySettings = field(default_factory=StudySettings)

    def __post_init__(self) -> None:
        require_choice("method", self.method, method_names())
        if not self.name or "/" in self.name:
            raise ValueError(f"name={self.name!r} is not allowed; use a non-empty name without '/'")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def for_method(self, method: str) -> ExperimentConfig:
        """The same experiment training ``method`` (gate methods also set ``adapter.gate``)."""
        adapter = dataclasses.replace(self.adapter, gate=method) if method in GATES else self.adapter
        return dataclasses.replace(self, method=method, adapter=adapter)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        return _build(cls, values, prefix="")

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] = ()) -> ExperimentConfig:
        """Read a YAML file (or start from the defaults) and apply ``key.sub=value`` overrides."""
        values: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"config file {path} does not exist")
            values = yaml.safe_load(path.read_text()) or {}
            if not isinstance(values, dict):
                raise ValueError(f"config file {path} must hold a mapping of settings, not {type(values).__name__}")
        for override in overrides:
            _apply_override(values, override)
        return cls.from_dict(values)


def _build(cls: type, values: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, recursing into dataclass-typed fields."""
    label = prefix.rstrip(".") or "config"
    if not isinstance(values, dict):
        raise ValueError(f"{label} must be a mapping of settings, not {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f"in {label} " if prefix else ""
        raise ValueError(f"unknown key(s) {where}{[prefix + key for key in unknown]}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    built = {}
    for name, value in values.items():
        kind = hints[name]
        if kind is MoLoRAConfig:
            built[name] = MoLoRAConfig.from_dict(value) if isinstance(value, dict) else value
        elif dataclasses.is_dataclass(kind):
            built[name] = _build(kind, value, prefix=f"{prefix}{name}.")
        else:
            built[name] = value
    return cls(**built)


def _apply_override(values: dict[str, Any], override: str) -> None:
    """``train.steps=50`` -> ``values["train"]["steps"] = 50`` (the value is parsed as YAML)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ValueError(f"override {override!r} is not allowed; write it as section.key=value, e.g. train.steps=50")
    *sections, leaf = key.strip().split(".")
    target = values
    for section in sections:
        target = target.setdefault(section, {})
        if not isinstance(target, dict):
            raise ValueError(f"override {override!r}: {section!r} is not a section")
    target[leaf] = yaml.safe_load(raw)
