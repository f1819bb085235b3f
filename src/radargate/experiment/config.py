"""`ExperimentConfig`: one run's model, data, adapter, training and comparison settings.

Loaded from YAML (``configs/*.yaml``) with command-line overrides such as
``--set train.steps=50``; every section is a typed dataclass that checks its values, and an
unknown or misspelt key is an error naming it and the allowed keys.

Values are read as their field's type, not by YAML 1.1's implicit rules (which read ``3e-4`` as
a string and ``no`` as ``False``): the YAML is parsed with every scalar kept as text, and each
text is converted by the dataclass field it lands in (``3e-4``, ``1_000``, ``.5`` are numbers in
numeric fields, ``no`` stays a string in a string field). A value that does not fit its field is
an error naming the field, the value and the expected type.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml
from accelerate.tracking import LOGGER_TYPE_TO_CLASS

from radargate.config import MoLoRAConfig
from radargate.experiment.data.bigbench import DEFAULT_SUITE
from radargate.experiment.loading import DEFAULT_MODEL
from radargate.gates import GATES
from radargate.precision import DTYPES
from radargate.validation import require_choice, require_int, require_number

BASELINES = ("base", "lora")
"""Methods besides the gates: the untrained model, and PEFT's LoRA at rank ``num_experts * r``."""
READINGS: dict[str, dict[str, str]] = {
    "radar-sparse": {"stretch": "topk"},
    "radar-fusion": {"fusion": "input"},
    "radar-softplus": {"stretch": "softplus"},
}
"""Other readings of RadarGate's abstract (``docs/radargate.md``), each a method of its own so that runs, cell files
and tables tell them apart: the ``radar`` gate with these adapter settings (``radar`` itself is the default reading)."""
PRECISIONS = ("auto", "no", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd")


def method_names() -> tuple[str, ...]:
    return (*BASELINES, *GATES, *READINGS)


def gate_of(method: str) -> str | None:
    """The gate a method trains (a reading trains ``radar``); ``None`` for the baselines."""
    return "radar" if method in READINGS else method if method in GATES else None


QUANT_BITS = (4, 8)
QUANT_TYPES = ("nf4", "fp4")


@dataclass
class QuantizationSettings:
    """A frozen base loaded in 4 or 8 bits by bitsandbytes (QLoRA style); experts and gates stay in float32.

    Only the base's linear layers are quantized (embeddings, norms and the output head keep
    ``model.dtype``). Checked here without bitsandbytes, so a config validates on any machine;
    loading the model needs it (``pip install 'radargate[quant]'``).
    """

    bits: int = 4
    """4 (``bnb.nn.Linear4bit``) or 8 (``bnb.nn.Linear8bitLt``, LLM.int8())."""
    quant_type: str = "nf4"
    """4-bit only: ``nf4`` (NormalFloat, QLoRA's) or ``fp4``."""
    compute_dtype: str = "auto"
    """4-bit only: the dtype its matmuls run in; ``auto``: ``model.dtype``."""
    double_quant: bool = False
    """4-bit only: quantize the per-block scales too (QLoRA's double quantization, ~0.4 bit/weight less)."""

    def __post_init__(self) -> None:
        if self.bits not in QUANT_BITS:
            raise ValueError(f"model.quantization.bits={self.bits!r} is not allowed; choose 4 or 8")
        require_choice("model.quantization.quant_type", self.quant_type, QUANT_TYPES)
        require_choice("model.quantization.compute_dtype", self.compute_dtype, ("auto", *DTYPES))
        if not isinstance(self.double_quant, bool):
            raise ValueError(f"model.quantization.double_quant={self.double_quant!r} is not allowed; use true or false")
        four_bit_only = {"quant_type": "nf4", "compute_dtype": "auto", "double_quant": False}
        changed = [name for name, default in four_bit_only.items() if getattr(self, name) != default]
        if self.bits == 8 and changed:
            raise ValueError(f"model.quantization.{changed[0]}={getattr(self, changed[0])!r} applies to 4-bit "
                             "quantization only; drop it or set model.quantization.bits=4")


@dataclass
class ModelSettings:
    name: str = DEFAULT_MODEL
    """The default alias (SmolLM2-135M-Instruct, offline), or any transformers name or path."""
    dtype: str = "float32"
    """Weights' dtype when loaded; mixed precision is ``train.precision``."""
    quantization: QuantizationSettings | None = None
    """A base quantized to 4 or 8 bits by bitsandbytes (``{bits: 4}``); ``None``: not quantized."""

    def __post_init__(self) -> None:
        require_choice("model.dtype", self.dtype, tuple(DTYPES))


FORMATS = ("completion", "chat", "multiple_choice")
SPLIT_RULES = ("auto", "hash", "own", "column")


@dataclass
class SourceSettings:
    """One data source of your own: a local file or folder, or a Hub dataset (``radargate.experiment.data.custom``)."""

    name: str = ""
    """The task id: per-task metrics and routing statistics are reported under it."""
    format: str = ""
    """``completion`` (prompt + completion), ``chat`` (messages) or ``multiple_choice`` (question, choices, answer)."""
    path: str = ""
    """A ``.jsonl``/``.json``, ``.csv`` or ``.parquet`` file, or a folder written by ``datasets``' ``save_to_disk``."""
    train_path: str = ""
    """Instead of ``path``: one file per split (``validation_path`` and ``test_path`` may be left empty)."""
    validation_path: str = ""
    test_path: str = ""
    hub: str = ""
    """Instead of a path: a dataset name on the Hugging Face Hub, read with ``datasets.load_dataset``."""
    subset: str = ""
    """The Hub dataset's configuration (subset) name, if it has several."""
    split: str = "auto"
    """``own``: the data's own splits (per-split files, a saved DatasetDict, the Hub dataset's splits); ``column``:
    the ``split_column`` of each row; ``hash``: the content-hash split of BIG-bench; ``auto``: ``own`` when the data
    has splits, else ``hash``."""
    split_column: str = "split"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    messages_field: str = "messages"
    question_field: str = "question"
    choices_field: str = "choices"
    answer_field: str = "answer"
    """The right choice's 0-based index, or its text."""
    weight: float = 1.0
    """How often each training example of this source is drawn, relative to the others (2: twice as often)."""
    max_train: int | None = None
    """Caps on this source's splits; ``None``: ``data.max_<split>_per_task``."""
    max_validation: int | None = None
    max_test: int | None = None

    def __post_init__(self) -> None:
        label = f"data.sources[{self.name or '?'}]"
        if not self.name or "/" in self.name:
            raise ValueError(f"{label}.name={self.name!r} is not allowed; give each source a name without '/'")
        require_choice(f"{label}.format", self.format, FORMATS)
        require_choice(f"{label}.split", self.split, SPLIT_RULES)
        split_files = [self.train_path, self.validation_path, self.test_path]
        given = [kind for kind, value in (("path", self.path), ("train_path", any(split_files)), ("hub", self.hub))
                 if value]
        if len(given) != 1:
            raise ValueError(f"{label} names {' and '.join(given) or 'no data'}; give exactly one of path, "
                             "train_path (with validation_path, test_path) or hub")
        if any(split_files) and not self.train_path:
            raise ValueError(f"{label}: validation_path and test_path need a train_path")
        require_number(f"{label}.weight", self.weight, low=0.0, low_inclusive=False)
        for cap in ("max_train", "max_validation", "max_test"):
            if getattr(self, cap) is not None:
                require_int(f"{label}.{cap}", getattr(self, cap), minimum=1)


@dataclass
class DataSettings:
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_SUITE))
    """BIG-bench multiple-choice tasks (``task`` or ``task/subtask``); not used when ``sources`` are given."""
    sources: list[SourceSettings] = field(default_factory=list)
    """Your own data sets, a multi-task mixture (one task per source); when given, BIG-bench is not loaded."""
    split_seed: int = 0
    """Seed of the content-hash splits (``radargate.experiment.data.bigbench``)."""
    max_train_per_task: int | None = 1000
    max_validation_per_task: int | None = 50
    max_test_per_task: int | None = 100
    max_length: int = 256
    """Longest tokenised prompt + answer; longer BIG-bench prompts lose their beginning, longer rows of
    ``sources`` are an error."""
    min_test_per_task: int = 0
    """Tops up a task's test split (10% of the task by its hash) to this many examples, or a third of the
    task, from its training examples: small tasks get enough test examples for intervals."""

    def __post_init__(self) -> None:
        if self.sources:
            self._check_sources()
        elif not self.tasks or not all(isinstance(task, str) for task in self.tasks):
            raise ValueError(f"data.tasks={self.tasks!r} is not allowed; give a non-empty list of task names")
        for name in ("max_train_per_task", "max_validation_per_task", "max_test_per_task"):
            if getattr(self, name) is not None:
                require_int(f"data.{name}", getattr(self, name), minimum=1)
        require_int("data.max_length", self.max_length, minimum=8)
        require_int("data.min_test_per_task", self.min_test_per_task, minimum=0)

    def _check_sources(self) -> None:
        """Sources replace BIG-bench: ``tasks`` left at its default becomes empty, anything else is refused."""
        if self.tasks and self.tasks != list(DEFAULT_SUITE):
            raise ValueError(f"data.tasks={self.tasks!r} and data.sources are alternatives; "
                             "drop data.tasks to train on your sources")
        self.tasks = []
        names = [source.name for source in self.sources]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"data.sources repeats the name(s) {repeated}; each source needs its own name")

    @property
    def task_names(self) -> list[str]:
        """The tasks of the mixture: the sources' names, else the BIG-bench tasks."""
        return [source.name for source in self.sources] or list(self.tasks)

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
    optimizer: str = "adamw"
    """``adamw`` or ``sgd`` (momentum 0.9; its update is linear in the gradient, which makes runs comparable
    to float rounding: AdamW's first steps divide near-zero gradients by their own size)."""
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    precision: str = "auto"
    """``auto``: bf16 autocast on a GPU that supports it, else full precision; or ``no``/``bf16``/``fp16``."""
    seed: int = 0
    eval_every: int = 0
    """Validation accuracy every this many steps (0: only at the end)."""
    save_every: int = 50
    """Checkpoint every this many steps (and at the end); a killed run resumes from the last one."""
    max_nonfinite_steps: int = 3
    """Steps in a row with a non-finite loss or gradient norm (each skipped) before the run stops."""
    max_skipped_share: float = 0.1
    """The most steps a run may skip as non-finite, as a share of ``steps`` (at most ``floor(share * steps)``
    of them, in a row or not). One more, or a skipped last step, and the run fails as diverged instead of
    ending on the weights of a run that was going wrong. In [0, 1]: 0 fails the run at its first skipped
    step, 1 only at a skipped last step. fp16 overflows that the grad scaler handles do not count."""
    compile: bool = False
    """``torch.compile`` each mixture layer (dynamic shapes). Pays on GPUs; on CPUs it measured slower."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers (any that accelerate supports: ``tensorboard``, ``wandb``, ``mlflow``, ...), logging
    per step the loss, each auxiliary loss, gradient norm, learning rate, tokens/s and the routing entropy
    of every mixture layer into ``<run>/tracking/``. Empty (the default): none."""

    def __post_init__(self) -> None:
        if not isinstance(self.compile, bool):
            raise ValueError(f"train.compile={self.compile!r} is not allowed; use true or false")
        for tracker in self.report_to:
            require_choice("train.report_to", tracker, sorted(LOGGER_TYPE_TO_CLASS))
        for name in ("steps", "batch_size", "grad_accum", "save_every", "max_nonfinite_steps"):
            require_int(f"train.{name}", getattr(self, name), minimum=1)
        for name in ("warmup_steps", "eval_every", "seed"):
            require_int(f"train.{name}", getattr(self, name), minimum=0)
        require_number("train.lr", self.lr, low=0.0, low_inclusive=False)
        require_number("train.weight_decay", self.weight_decay, low=0.0)
        require_number("train.max_grad_norm", self.max_grad_norm, low=0.0, low_inclusive=False)
        require_number("train.max_skipped_share", self.max_skipped_share, low=0.0, high=1.0)
        require_choice("train.precision", self.precision, PRECISIONS)
        require_choice("train.optimizer", self.optimizer, OPTIMIZERS)


@dataclass
class EvalSettings:
    batch_size: int = 16
    """Sequences (prompt + one choice) per forward pass."""
    fit_per_task: int = 20
    """Training examples per task (the first ones of the train split) scored after training, in eval mode:
    how well each method fits what it was trained on (0: skip)."""

    def __post_init__(self) -> None:
        require_int("eval.batch_size", self.batch_size, minimum=1)
        require_int("eval.fit_per_task", self.fit_per_task, minimum=0)


@dataclass
class CompareSettings:
    methods: list[str] = field(default_factory=lambda: ["lora", "softmax", "radar"])

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("compare.methods=[] is not allowed; name at least one method")
        for method in self.methods:
            require_choice("compare.methods", method, method_names())


STUDY_AXES = ("fixed_r", "fixed_total_rank")
UNSEEN_SPLITS = ("all", "test")
UNSEEN_TASKS = ["navigate", "causal_judgment", "disambiguation_qa", "hyperbaton", "snarks", "movie_recommendation"]
"""BIG-bench multiple-choice tasks outside the training suite, for zero-shot generalisation."""


@dataclass
class RobustnessSettings:
    """Whether the study's answer survives other readings of RadarGate and the premise tested alone, by the
    protocol in ``docs/robustness-protocol.md`` (written before any of these cells ran;
    ``radargate.experiment.robustness`` runs it): the ``searched`` methods get the study's learning-rate search,
    the reading with the lowest validation answer NLL (``radar`` included) is the best reading, and it runs
    beside ``compared`` at each of ``experts`` with the first ``seed_counts`` seeds, scored zero-shot on a wider
    set of unseen tasks."""

    searched: list[str] = field(default_factory=lambda: [*READINGS, "signed"])
    """Methods given the study's learning-rate search (``study.lr_grid`` at ``study.lr_experts``, first seed)."""
    compared: list[str] = field(default_factory=lambda: ["topk", "radar", "signed"])
    """Methods run beside the best reading; a method the study itself searched keeps the study's rate."""
    experts: list[int] = field(default_factory=lambda: [8, 32])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    seed_counts: list[int] = field(default_factory=lambda: [3, 2])
    """How many of ``seeds`` (the first ones) run at each of ``experts``, in order."""
    unseen_tasks: list[str] = field(default_factory=lambda: list(UNSEEN_TASKS))
    """The wider unseen set, chosen by ``radargate tasks --held-out`` (``radargate.experiment.data.held_out``)."""
    unseen_subset: list[str] = field(default_factory=lambda: list(UNSEEN_TASKS))
    """A named subset of ``unseen_tasks`` reported on its own: the study's original unseen tasks."""
    max_unseen_per_task: int = 40
    cells_dir: str = ""
    """Its cell files; empty: ``<report_dir>/<name>_robustness_cells``."""

    def __post_init__(self) -> None:
        for method in [*self.searched, *self.compared]:
            require_choice("study.robustness methods", method, [m for m in method_names() if m not in BASELINES])
        for n in self.experts:
            require_int("study.robustness.experts", n, minimum=1)
        for seed in self.seeds:
            require_int("study.robustness.seeds", seed, minimum=0)
        if len(self.seed_counts) != len(self.experts):
            raise ValueError(f"study.robustness.seed_counts={self.seed_counts} needs one count per entry of "
                             f"study.robustness.experts={self.experts}")
        for count in self.seed_counts:
            require_int("study.robustness.seed_counts", count, minimum=1)
            if count > len(self.seeds):
                raise ValueError(f"study.robustness.seed_counts holds {count}, more than the {len(self.seeds)} "
                                 f"seeds of study.robustness.seeds={self.seeds}")
        missing = sorted(set(self.unseen_subset) - set(self.unseen_tasks))
        if missing:
            raise ValueError(f"study.robustness.unseen_subset names {missing}, which are not in its unseen_tasks")
        require_int("study.robustness.max_unseen_per_task", self.max_unseen_per_task, minimum=1)


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
    unseen_split: str = "all"
    """Which examples of an unseen task are scored: ``all`` (none was trained on, so every split is held out)
    or ``test`` (its test split only, 10% of the task)."""
    report_dir: str = "reports"
    cells_dir: str = ""
    """One small JSON file per finished cell (``radargate.experiment.cells``), meant to be committed;
    the report is rebuilt from these files alone. Empty: ``<report_dir>/<name>_cells``."""
    lr_grid: list[float] = field(default_factory=list)
    """Learning rates each method tries at ``lr_experts`` experts (first seed); every cell of the method then
    trains at the rate with the lowest validation answer NLL. Empty: ``train.lr`` for every method."""
    lr_experts: int = 8
    lr_extend: int = 1
    """Rates a method may try beyond the grid's end when its best rate lies there, one grid step at a time
    (``radargate.experiment.plan.searched_rates``); 0: the grid alone."""
    headline_tasks: list[str] = field(default_factory=list)
    """The paper's per-task fitting experiment: each task trained alone at ``headline_experts`` experts by
    each of ``headline_methods`` (first seed, ``headline_steps`` steps). Empty: skipped."""
    headline_methods: list[str] = field(default_factory=lambda: ["softmax", "topk", "radar"])
    headline_experts: int = 8
    headline_steps: int | None = None
    """Steps of a headline cell (``None``: ``train.steps``)."""
    robustness: RobustnessSettings | None = None
    """Other readings of RadarGate and the signed gate, by a pre-registered protocol; ``None``: not run."""

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
        require_choice("study.unseen_split", self.unseen_split, UNSEEN_SPLITS)
        for lr in self.lr_grid:
            if not lr > 0:
                raise ValueError(f"study.lr_grid holds lr={lr!r}; every learning rate must be > 0")
        for method in self.headline_methods:
            require_choice("study.headline_methods", method, [m for m in method_names() if m != "base"])
        require_int("study.lr_experts", self.lr_experts, minimum=1)
        require_int("study.lr_extend", self.lr_extend, minimum=0)
        require_int("study.headline_experts", self.headline_experts, minimum=1)
        if self.headline_steps is not None:
            require_int("study.headline_steps", self.headline_steps, minimum=1)
        if self.robustness is not None:
            self._check_robustness(self.robustness)

    def _check_robustness(self, robustness: RobustnessSettings) -> None:
        """Its protocol chooses on the learning-rate search, and every compared method needs a rate from a search."""
        if not self.lr_grid:
            raise ValueError("study.robustness needs study.lr_grid: the best reading is chosen on the validation "
                             "scores of the learning-rate search")
        unrated = [m for m in robustness.compared if m not in self.methods and m not in robustness.searched]
        if unrated:
            raise ValueError(f"study.robustness.compared holds {unrated}, which neither study.methods nor "
                             "study.robustness.searched gives a learning rate; add them to one of the two")


@dataclass
class ExperimentConfig:
    name: str = "run"
    """Results go to ``<output_dir>/<name>/``."""
    output_dir: str = "runs"
    method: str = "radar"
    """What ``radargate train`` trains: ``lora``, ``base`` (nothing), a gate name, or a reading of RadarGate
    (``READINGS``). The one source of truth for the gate: ``adapter.gate`` (and a reading's settings) follow
    it and may only repeat it."""
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
        gate = gate_of(self.method)
        if gate is not None:
            settings = {"gate": gate, **READINGS.get(self.method, {})}
            if any(getattr(self.adapter, key) != value for key, value in settings.items()):
                self.adapter = dataclasses.replace(self.adapter, **settings)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def for_method(self, method: str) -> ExperimentConfig:
        """The same experiment training ``method`` (a gate method also sets ``adapter.gate``)."""
        return dataclasses.replace(self, method=method)

    def to_dict(self) -> dict[str, Any]:
        """Plain values; ``adapter.gate`` only where the method has a gate (PEFT's LoRA has none)."""
        values = dataclasses.asdict(self)
        if gate_of(self.method) is None:
            del values["adapter"]["gate"]
        return values

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        """Build from plain values, YAML text scalars included; see the module docstring."""
        return _build(cls, _with_gate_from_method(values), prefix="")

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
        """Read a YAML file (or start from the defaults) and apply ``key.sub=value`` overrides."""
        values: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"config file {path} does not exist")
            values = _parse_yaml(path.read_text(), f"config file {path}") or {}
            if not isinstance(values, dict):
                raise ValueError(f"config file {path} must hold a mapping of settings, not {type(values).__name__}")
        for override in overrides:
            _apply_override(values, override)
        return cls.from_dict(values)


def _parse_yaml(text: str, source: str) -> Any:
    """YAML with every scalar kept as text (``BaseLoader``): fields type their own values."""
    try:
        return yaml.load(text, Loader=yaml.BaseLoader)  # BaseLoader builds only str, list and dict
    except yaml.YAMLError as error:
        raise ValueError(f"{source} is not valid YAML: {error}") from None


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
    implied = READINGS.get(method, {})
    for key, value in implied.items():
        if key in adapter and adapter[key] != value:
            raise ValueError(f"adapter.{key}={adapter[key]!r} contradicts method={method!r}, which is the radar gate "
                             f"with {key}={value!r}; drop adapter.{key} or set method: radar")
    return {**values, "adapter": {**adapter, "gate": gate, **implied}} if gate is not None else values


def _build(cls: type, values: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, each value typed by its field (recursing into sections)."""
    label = prefix.rstrip(".") or "config"
    if not isinstance(values, dict):
        raise ValueError(f"{label} must be a mapping of settings, not {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f"in {label} " if prefix else ""
        raise ValueError(f"unknown key(s) {where}{[prefix + key for key in unknown]}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    built = {name: _typed(f"{prefix}{name}", value, hints[name]) for name, value in values.items()}
    if cls is MoLoRAConfig:
        try:
            return cls(**built)
        except ValueError as error:  # its messages start with the field name: say which section
            raise ValueError(f"{prefix}{error}") from None
    return cls(**built)


TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on"), ("false", "no", "off")
NULL_WORDS = ("null", "~", "none", "")


def _typed(name: str, value: Any, kind: Any) -> Any:
    """``value`` as field type ``kind``: YAML text is converted, typed values are checked."""
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, prefix=f"{name}.")
    options = typing.get_args(kind) if typing.get_origin(kind) in (Union, types.UnionType) else ()
    if type(None) in options:
        if value is None or (isinstance(value, str) and value.strip().lower() in NULL_WORDS):
            return None
        options = tuple(option for option in options if option is not type(None))
    if len(options) > 1:  # list[str] | str: a list of names or one pattern
        wanted = list if isinstance(value, list) else str
        kind = next((option for option in options if (typing.get_origin(option) or option) is wanted), options[0])
    elif options:
        kind = options[0]
    if dataclasses.is_dataclass(kind):  # an optional section such as model.quantization
        return _build(kind, value, prefix=f"{name}.")
    if typing.get_origin(kind) is list:
        if not isinstance(value, list):
            raise ValueError(f"{name}={value!r} is not allowed; expected a list such as [a, b]")
        (item,) = typing.get_args(kind)
        return [_typed(name, element, item) for element in value]
    return _scalar(name, value, kind)


def _scalar(name: str, value: Any, kind: type) -> Any:
    """Text to ``bool``/``int``/``float``/``str`` as users write it; anything else must already fit."""
    if isinstance(value, str) and kind is not str:
        value = _parse_text(name, value.strip(), kind)
    fits = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not fits:
        raise ValueError(f"{name}={value!r} is not allowed; expected {_describe(kind)}")
    return value


def _parse_text(name: str, text: str, kind: type) -> Any:
    if kind is bool:
        if text.lower() in TRUE_WORDS + FALSE_WORDS:
            return text.lower() in TRUE_WORDS
        raise ValueError(f"{name}={text!r} is not allowed; expected {_describe(bool)}")
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not allowed; expected {_describe(kind)}") from None
    if kind is int:
        if not (math.isfinite(number) and number.is_integer()):
            raise ValueError(f"{name}={text!r} is not allowed; expected {_describe(int)}")
        return int(text) if text.lstrip("+-").replace("_", "").isdigit() else int(number)
    return number


def _describe(kind: type) -> str:
    return {
        bool: "true or false (also yes/no, on/off)",
        int: "an integer such as 8 or 1_000",
        float: "a number such as 0.001, 3e-4 or .5",
        str: "a text value",
    }.get(kind, kind.__name__)


def _apply_override(values: dict[str, Any], override: str) -> None:
    """``train.steps=50`` -> ``values["train"]["steps"] = "50"`` (YAML text, typed by its field later)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ValueError(f"override {override!r} is not allowed; write it as section.key=value, e.g. train.steps=50")
    *sections, leaf = key.strip().split(".")
    target = values
    for section in sections:
        target = target.setdefault(section, {})
        if not isinstance(target, dict):
            raise ValueError(f"override {override!r}: {section!r} is not a section")
    target[leaf] = _parse_yaml(raw, f"override {override!r}")
