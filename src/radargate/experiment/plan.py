"""Which cells a study has: the base model, the learning-rate search, the sweep and the single-task
cells, and each method's rate as chosen from the search's cell files (see ``radargate.experiment.study``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from radargate.experiment.cells import Cell, CellStore
from radargate.experiment.config import ExperimentConfig

BASE = Cell("base")


def learning_rate_cells(config: ExperimentConfig) -> list[Cell]:
    study = config.study
    return [Cell(method, study.lr_experts, config.adapter.r, study.seeds[0], lr)
            for method in _trained_methods(config) for lr in study.lr_grid]


def _trained_methods(config: ExperimentConfig) -> list[str]:
    study = config.study
    headline = study.headline_methods if study.headline_tasks else []
    return [method for method in dict.fromkeys([*study.methods, *headline]) if method != "base"]


def pick_learning_rate(validation_nll: Mapping[float, float | None]) -> float | None:
    """The rate with the lowest validation answer NLL (the smaller rate on a tie); ``None`` when every
    rate failed. NLL rather than accuracy: on a few hundred examples it separates rates that accuracy cannot."""
    scored = [(nll, lr) for lr, nll in validation_nll.items() if nll is not None]
    return min(scored)[1] if scored else None


def learning_rates(config: ExperimentConfig, store: CellStore) -> dict[str, float | None] | None:
    """Each method's rate: ``train.lr`` without a grid, else chosen from the search's cell files
    (``None`` while some of those have not run; a method whose every rate diverged gets ``None``)."""
    if not config.study.lr_grid:
        return dict.fromkeys(_trained_methods(config), config.train.lr)
    scores: dict[str, dict[float, float | None]] = {}
    for cell in learning_rate_cells(config):
        record = store.load(cell, config)
        if record is None:
            return None
        scores.setdefault(cell.method, {})[cell.lr] = validation_answer_nll(record)
    return {method: pick_learning_rate(by_rate) for method, by_rate in scores.items()}


def validation_answer_nll(record: dict[str, Any]) -> float | None:
    validation = record["metrics"]["validation"]
    return None if record["failed"] or not validation else validation[-1].get("macro_answer_nll")


def sweep_cells(config: ExperimentConfig, rates: Mapping[str, float | None]) -> dict[str, list[Cell]]:
    """Per axis, the sweep's cells in seed order (one seed's full grid before the next)."""
    study = config.study
    axes = {}
    for axis in study.axes:
        ranks = {n: (study.total_rank // n if axis == "fixed_total_rank" else config.adapter.r) for n in study.experts
                 if axis == "fixed_r" or study.total_rank % n == 0}
        axes[axis] = [Cell(method, n, r, seed, rates[method]) for seed in study.seeds for n, r in ranks.items()
                      for method in study.methods if rates.get(method) is not None]
    return axes


def headline_cells(config: ExperimentConfig, rates: Mapping[str, float | None]) -> list[Cell]:
    study = config.study
    return [Cell(method, study.headline_experts, config.adapter.r, study.seeds[0], rates[method], task,
                 study.headline_steps)
            for task in study.headline_tasks for method in study.headline_methods if rates.get(method) is not None]
