"""The scaling study: does RadarGate keep improving as the number of experts grows?

``radargate study --config configs/study.yaml`` trains every cell (axis x method x experts x seed)
with ``run_method`` in ``<output_dir>/<name>/<method>-n<n>-r<r>-s<seed>/``, evaluates it on the
test split and zero-shot on BIG-bench tasks outside training (``unseen.json``), and writes
``<report_dir>/<name>.md`` with ``<name>.json`` / ``<name>.csv`` beside it. Finished cells are never
run again, so an interrupted sweep resumes and a rerun only rebuilds the report.

Axes: ``fixed_r`` keeps each expert's rank (the mixture grows with ``n``); ``fixed_total_rank``
sets ``r = total_rank / n`` (the same parameter budget at every ``n``; ``n`` that do not divide it
are skipped). ``lora`` is PEFT's LoRA at rank ``n * r``, the same trainable width. A cell that both
axes contain (``r == total_rank / n``) is trained once: its directory names the settings, not the axis.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radargate.experiment.config import ExperimentConfig
from radargate.experiment.data.bigbench import load_splits, load_suite
from radargate.experiment.evaluate import evaluate_multiple_choice, mean
from radargate.experiment.methods import load_trained
from radargate.experiment.report.analysis import summarize_contrast
from radargate.experiment.report.study import cells_csv, write_study_report
from radargate.experiment.run import run_or_record_failure
from radargate.experiment.train import autocast_dtype
from radargate.files import atomic_write_json, atomic_write_text
from radargate.hardware import hardware_description

IDENTITY = ("axis", "method", "n", "seed", "failed")
"""The keys of a cell row that name it (or mark it failed); every other key is a number averaged over seeds."""


@dataclass(frozen=True)
class Cell:
    axis: str
    method: str
    n: int
    r: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-n{self.n}-r{self.r}-s{self.seed}"

    def config(self, base: ExperimentConfig) -> ExperimentConfig:
        adapter = dataclasses.replace(base.adapter, num_experts=self.n, r=self.r)
        train = dataclasses.replace(base.train, seed=self.seed)
        return dataclasses.replace(base, adapter=adapter, train=train).for_method(self.method)


def cells(config: ExperimentConfig) -> list[Cell]:
    study = config.study
    return [
        Cell(axis, method, n, study.total_rank // n if axis == "fixed_total_rank" else config.adapter.r, seed)
        for axis in study.axes
        for n in study.experts
        if axis == "fixed_r" or study.total_rank % n == 0
        for method in study.methods
        for seed in study.seeds
    ]


def run_cell(config: ExperimentConfig, cell: Cell, splits: dict[str, list]) -> dict[str, Any]:
    """Train and test one cell (or read it back), then its zero-shot accuracy on unseen tasks."""
    return _run_with_unseen(cell.config(config), config.run_dir / cell.name, splits)


def run_base(config: ExperimentConfig, splits: dict[str, list]) -> dict[str, Any]:
    """The untrained base model on the same test split and unseen tasks: the point of reference
    that shows what training did, on the suite and off it."""
    return _run_with_unseen(config.for_method("base"), config.run_dir / "base", splits)


def _run_with_unseen(config: ExperimentConfig, directory: Path, splits: dict[str, list]) -> dict[str, Any]:
    result = run_or_record_failure(config, directory, show_progress=False, splits=splits)
    if result.get("failed"):
        return result
    unseen_path = directory / "unseen.json"
    if not unseen_path.is_file():
        atomic_write_json(unseen_path, evaluate_unseen(config, directory))
    result["unseen"] = json.loads(unseen_path.read_text())
    return result


def evaluate_unseen(config: ExperimentConfig, directory: Path) -> dict[str, Any]:
    model, tokenizer, _ = load_trained(directory)
    study = config.study
    examples = load_suite(study.unseen_tasks, seed=config.data.split_seed,
                          max_per_split={"test": study.max_unseen_per_task})["test"]
    return evaluate_multiple_choice(
        model, tokenizer, examples, batch_size=config.eval.batch_size, max_length=config.data.max_length,
        autocast_dtype=autocast_dtype(config.train.precision),
    )


def cell_row(cell: Cell, result: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one cell that the report aggregates, straight from its results."""
    if result.get("failed"):
        return {"axis": cell.axis, "method": cell.method, "n": cell.n, "seed": cell.seed, "failed": True}
    validation = result.get("validation") or [{}]
    routing = result.get("routing") or {}
    contrast = summarize_contrast(routing) if any("contrast" in layer for layer in routing.values()) else {}
    return {
        "axis": cell.axis, "method": cell.method, "n": cell.n, "seed": cell.seed, "failed": False,
        "final_train_loss": result.get("final_train_loss"),
        "val_acc": validation[-1].get("macro_acc"),
        "fit_answer_nll": (result.get("fit") or {}).get("macro_answer_nll"),
        "test_acc": result["test"]["macro_acc"],
        "test_answer_nll": result["test"].get("macro_answer_nll"),
        "unseen_acc": result["unseen"]["macro_acc"],
        "unseen_answer_nll": result["unseen"].get("macro_answer_nll"),
        "trainable_params": result.get("trainable_params"),
        "train_time_s": result.get("train_time_s"),
        "wall_time_s": result.get("wall_time_s"),
        "mean_rho": contrast.get("mean_rho"),
        "mean_rho_shuffled": contrast.get("mean_rho_shuffled_theta_baseline"),
        "routing_entropy": mean(layer.get("mean_entropy") for layer in routing.values()),
        **_unseen_per_task(result),
    }


def _unseen_per_task(result: dict[str, Any]) -> dict[str, float]:
    return {f"unseen_{task}": scores["acc"] for task, scores in sorted(result["unseen"]["per_task"].items())}


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, per (axis, method, n); failed cells are counted, not averaged."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["axis"], row["method"], row["n"])].append(row)
    summary = []
    for (axis, method, n), members in sorted(groups.items()):
        entry: dict[str, Any] = {"axis": axis, "method": method, "n": n, "seeds": len(members),
                                 "failed": sum(bool(m.get("failed")) for m in members)}
        metrics = dict.fromkeys(key for m in members for key in m if key not in IDENTITY)
        for metric in metrics:
            values = [m[metric] for m in members if m.get(metric) is not None]
            entry[metric] = mean(values)
            entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
        summary.append(entry)
    return summary


def study(config: ExperimentConfig) -> Path:
    """Run (or read back) every cell, then write the report and the raw results."""
    started = time.perf_counter()
    splits = load_splits(config)  # cells differ in method, experts and seed, never in data
    base = base_row(run_base(config, splits))
    results = {cell: run_cell(config, cell, splits) for cell in cells(config)}
    rows = [cell_row(cell, result) for cell, result in results.items()]
    summary = aggregate(rows)
    report_dir = Path(config.study.report_dir)
    name = config.name
    raw = {"config": config.to_dict(), "hardware": hardware_description(), "base": base, "cells": rows,
           "summary": summary, "wall_time_s_this_invocation": time.perf_counter() - started}
    atomic_write_json(report_dir / f"{name}.json", raw)
    atomic_write_text(report_dir / f"{name}.csv", cells_csv(rows))
    return write_study_report(config, summary, results, base, report_dir)


def base_row(result: dict[str, Any]) -> dict[str, Any]:
    """The base model's accuracies, keyed as the summary's entries are (one run: no spread)."""
    return {"axis": "-", "method": "base", "n": "-", "test_acc": result["test"]["macro_acc"],
            "unseen_acc": result["unseen"]["macro_acc"],
            **_unseen_per_task(result)}
