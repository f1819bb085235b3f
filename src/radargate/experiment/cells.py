"""The study's unit of work, a cell, and the small file each finished cell leaves for git.

A cell is one method trained at one setting (experts ``n``, rank ``r``, seed, learning rate, and either
the whole suite or one task alone), then evaluated: the fit (training examples, eval mode), the test
split, and, for suite cells, the unseen tasks zero-shot. Its name says all of that, so a cell that two
parts of a study share (the learning-rate search at ``n = 8`` and the scaling sweep, say) runs once.

Its result file, ``<cells_dir>/<name>.json`` (about 100 KB), holds everything the report reads: the
cell's full config, every metric, the per-example correctness and answer NLL of every evaluated
example (for paired bootstrap intervals), the training curve, the routing summary, timings and the
hardware. The report is built from these files alone; checkpoints stay in ``<output_dir>`` (not in git).

A study whose data (training or unseen) comes from a generator package records that package's version in each
cell file (``data_versions``; reasoning-gym, whose rows change with its version), and :class:`CellStore` refuses
a cell made with another version than its siblings in the folder, and running a new cell with another version
than theirs: a comparison of cells trained or scored on different rows would be meaningless.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radargate import __version__
from radargate.experiment.config import ExperimentConfig
from radargate.experiment.data.bigbench import load_suite
from radargate.experiment.data.packaged import data_versions
from radargate.experiment.data.sources import check_lengths, load_sources, load_splits
from radargate.experiment.evaluate import METRICS, autocast_dtype, evaluate_examples
from radargate.experiment.loading import load_model_and_tokenizer
from radargate.experiment.methods import load_trained
from radargate.experiment.run import config_differences, run_or_record_failure
from radargate.files import atomic_write_json, read_json
from radargate.hardware import hardware_description

FORMAT = 1
NLL_DIGITS = 5


@dataclass(frozen=True)
class Cell:
    """One trained (or, for ``base``, untrained) model of the study; ``task``: trained on it alone."""

    method: str
    n: int = 0
    r: int = 0
    seed: int = 0
    lr: float = 0.0
    task: str | None = None
    steps: int | None = None
    """Training steps when they differ from the study's ``train.steps`` (the single-task cells)."""

    @property
    def name(self) -> str:
        if self.method == "base":
            return "base"
        name = f"{self.method}-n{self.n}-r{self.r}-s{self.seed}-lr{self.lr:g}"
        return name if self.task is None else f"{self.task.replace('/', '.')}-{name}"

    def config(self, study: ExperimentConfig) -> ExperimentConfig:
        """The study's config with this cell's settings."""
        if self.method == "base":
            return study.for_method("base")
        adapter = dataclasses.replace(study.adapter, num_experts=self.n, r=self.r)
        train = dataclasses.replace(study.train, seed=self.seed, lr=self.lr, steps=self.steps or study.train.steps)
        data = study.data
        if self.task and data.sources:  # a single-task cell trains on that source alone
            data = dataclasses.replace(data, sources=[source for source in data.sources if source.name == self.task])
        elif self.task:
            data = dataclasses.replace(data, tasks=[self.task])
        return dataclasses.replace(study, adapter=adapter, train=train, data=data).for_method(self.method)


def cells_directory(config: ExperimentConfig) -> Path:
    return Path(config.study.cells_dir or Path(config.study.report_dir) / f"{config.name}_cells")


class CellStore:
    """The folder of cell files: where a cell's file goes, and reading one back checked against its config."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._versions: dict[str, dict[str, str]] | None = None

    def sibling_versions(self) -> dict[str, dict[str, str]]:
        """``{cell file name: its data_versions}`` for the cell files in the folder that record any (read once)."""
        if self._versions is None:
            self._versions = {}
            for path in sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []:
                versions = read_json(path).get("data_versions")
                if versions:
                    self._versions[path.name] = versions
        return self._versions

    def check_versions(self, versions: dict[str, str], what: str) -> None:
        """Refuse ``versions`` (of ``what``: a cell file, or the installed packages) where a sibling cell recorded
        another version of the same package."""
        for name, recorded in self.sibling_versions().items():
            clashing = {package: (version, recorded[package]) for package, version in versions.items()
                        if package in recorded and recorded[package] != version}
            if clashing and name != what:
                package, (mine, theirs) = next(iter(clashing.items()))
                raise ValueError(f"{what} was made with {package} {mine}, but the cell {self.directory / name} "
                                 f"with {package} {theirs}: their rows differ; install {package}=={theirs}, or move "
                                 "the cells of the other version away")

    def path(self, cell: Cell) -> Path:
        return self.directory / f"{cell.name}.json"

    def load(self, cell: Cell, study: ExperimentConfig) -> dict[str, Any] | None:
        """The cell's record, or ``None`` if it has not run; a file made with other settings is an error
        (reusing it would compare methods trained differently)."""
        path = self.path(cell)
        if not path.is_file():
            return None
        record = read_json(path)
        self.check_versions(record.get("data_versions") or {}, path.name)
        # read back through the config class, as a resumed run is: a setting added since fills its default
        saved = ExperimentConfig.from_dict(record["config"]).to_dict()
        changed = config_differences(saved, cell.config(study).to_dict())
        changed += config_differences(record.get("unseen_settings") or {}, unseen_settings(cell, study))
        if changed:
            raise ValueError(f"{path} was made with other settings than this study's ({', '.join(changed[:6])}); "
                             "move it away (or restore the settings) to go on")
        return record


def unseen_settings(cell: Cell, study: ExperimentConfig) -> dict[str, Any]:
    """The study settings a suite cell's unseen-task scores depend on (single-task cells have none)."""
    if cell.task is not None:
        return {}
    settings = study.study
    unseen = {"unseen_tasks": settings.unseen_tasks, "max_unseen_per_task": settings.max_unseen_per_task,
              "unseen_split": settings.unseen_split}
    if settings.unseen_sources:  # left out otherwise, so cell files from before the field still match
        unseen["unseen_sources"] = [dataclasses.asdict(source) for source in settings.unseen_sources]
    return unseen


def run_cell(study: ExperimentConfig, cell: Cell, splits: dict[str, list] | None = None) -> dict[str, Any]:
    """Train and evaluate one cell in ``<output_dir>/<name>/<cell>/`` (resuming what is there) and
    return its record; a diverged run gives a record marked failed."""
    config = cell.config(study)
    versions = study_data_versions(study)
    run_dir = study.run_dir / cell.name
    result = run_or_record_failure(config, run_dir, show_progress=False, splits=splits or load_splits(config))
    unseen, unseen_seconds = None, None
    if cell.task is None and not result.get("failed"):
        started = time.perf_counter()
        unseen = evaluate_unseen(config, run_dir)
        unseen_seconds = time.perf_counter() - started
    record = cell_record(cell, config, result, unseen, unseen_seconds)
    if versions:  # left out otherwise: cell files of BIG-bench studies stay as they were
        record["data_versions"] = versions
    return {**record, "unseen_settings": unseen_settings(cell, study)}


def evaluate_unseen(config: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
    """Zero-shot scores on the study's unseen tasks (``study.unseen_sources``, else the BIG-bench
    ``study.unseen_tasks``): generalisation off the training data."""
    model, tokenizer, _ = load_trained(run_dir)
    examples = unseen_examples(config)
    if config.study.unseen_sources:
        check_lengths(tokenizer, examples, config.data.max_length)
    return evaluate_examples(
        model, tokenizer, examples, batch_size=config.eval.batch_size, max_length=config.data.max_length,
        autocast_dtype=autocast_dtype(config.train.precision),
    )


def unseen_examples(config: ExperimentConfig) -> list:
    """The examples of the study's unseen tasks that a suite cell scores (``study.unseen_split``)."""
    study = config.study
    fractions = (0.0, 0.0, 1.0) if study.unseen_split == "all" else (0.8, 0.1, 0.1)
    if study.unseen_sources:
        return load_sources(study.unseen_sources, config.data, fractions=fractions,
                            caps={"test": study.max_unseen_per_task}, min_test_per_task=0)["test"]
    return load_suite(study.unseen_tasks, seed=config.data.split_seed, fractions=fractions,
                      max_per_split={"test": study.max_unseen_per_task})["test"]


def check_unseen_lengths(config: ExperimentConfig) -> None:
    """Refuse unseen sources with a row longer than ``data.max_length`` before any cell trains (the check after
    training would throw the trained cell's unseen scores away)."""
    if config.study.unseen_sources:
        tokenizer = load_model_and_tokenizer(config.model.name)[1]  # loading.py has no tokenizer alone
        check_lengths(tokenizer, unseen_examples(config), config.data.max_length)


def cell_record(cell: Cell, config: ExperimentConfig, result: dict[str, Any], unseen: dict[str, Any] | None,
                unseen_seconds: float | None) -> dict[str, Any]:
    """What the cell file holds (see the module docstring)."""
    evaluations = {"fit": result.get("fit"), "test": result.get("test"), "unseen": unseen}
    history = result.get("history") or []
    return {
        "format": FORMAT,
        "cell": {"name": cell.name, **dataclasses.asdict(cell)},
        "config": config.to_dict(),
        "failed": result.get("failed"),
        "hardware": hardware_description(),
        "radargate_version": __version__,
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "timings": {
            "train_s": result.get("train_time_s"),
            "train_and_test_s": result.get("wall_time_s"),
            "unseen_s": unseen_seconds,
            "tokens_per_s": result.get("tokens_per_s"),
        },
        "metrics": {
            "final_train_loss": result.get("final_train_loss"),
            "trainable_params": result.get("trainable_params"),
            "steps": result.get("steps"),
            "skipped_steps": result.get("skipped_steps"),
            "adapter": result.get("adapter"),
            "validation": result.get("validation") or [],
            **{split: _scores(evaluation) for split, evaluation in evaluations.items() if evaluation},
        },
        "examples": {split: _columns(evaluation["examples"]) for split, evaluation in evaluations.items()
                     if evaluation},
        "training": {key: [row.get(key) for row in history] for key in ("step", "lm_loss", "grad_norm")},
        "routing": _compact_routing(result.get("routing")),
    }


def _scores(evaluation: dict[str, Any]) -> dict[str, Any]:
    """Macro scores and per-task scores, without the per-example records (kept as columns)."""
    return {key: value for key, value in evaluation.items() if key != "examples"}


def _columns(records: list[dict[str, Any]]) -> dict[str, list]:
    """Per-example records as columns (a third of the size of a list of objects)."""
    columns: dict[str, list] = {"task": [r["task"] for r in records], "id": [r["id"] for r in records]}
    for metric in METRICS:
        columns[metric] = [round(r[metric], NLL_DIGITS) if isinstance(r[metric], float) else r[metric]
                           for r in records]
    return columns


def evaluation(record: dict[str, Any], split: str) -> dict[str, Any] | None:
    """One split's evaluation as ``evaluate_examples`` returns it (per-example ``examples``), for
    ``report.intervals.paired_difference``; ``None`` if the cell has no such evaluation."""
    columns = record.get("examples", {}).get(split)
    if columns is None:
        return None
    keys = list(columns)
    return {**record["metrics"][split], "examples": [dict(zip(keys, values, strict=True))
                                                     for values in zip(*columns.values(), strict=True)]}


def _compact_routing(routing: dict[str, Any] | None) -> dict[str, Any] | None:
    """The routing summary without the contrastive analysis' sample points (plots of one cell need
    them; a file meant for git does not)."""
    if not routing:
        return None
    compact = {}
    for layer, summary in routing.items():
        summary = dict(summary)
        if "contrast" in summary:
            summary["contrast"] = {k: v for k, v in summary["contrast"].items() if k != "points"}
        compact[layer] = summary
    return compact


def write_record(store: CellStore, record: dict[str, Any]) -> Path:
    path = store.directory / f"{record['cell']['name']}.json"
    atomic_write_json(path, record)
    if record.get("data_versions"):
        store.sibling_versions()[path.name] = record["data_versions"]
    return path


def study_data_versions(study: ExperimentConfig) -> dict[str, str]:
    """The installed versions of the packages that generate the study's training and unseen data."""
    return data_versions([*study.data.sources, *study.study.unseen_sources])
