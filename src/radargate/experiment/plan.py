"""Which cells a study has: the base model, the learning-rate search, the sweep and the single-task
cells, and each method's rate as chosen from the search's cell files (see ``radargate.experiment.study``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from radargate.experiment.cells import Cell, CellStore
from radargate.experiment.config import ExperimentConfig
from radargate.experiment.config.names import READINGS
from radargate.experiment.config.study import BEST_READING

BASE = Cell("base")
DEFAULT_READING = "radar"


def learning_rate_cells(config: ExperimentConfig, store: CellStore | None = None) -> list[Cell]:
    """The learning-rate search: each method at ``study.lr_experts`` experts, first seed, at every rate of
    ``study.lr_grid`` and, given the ``store`` of finished cells, at the rates beyond the grid's edge that
    those cells call for (:func:`searched_rates`)."""
    study = config.study
    return [Cell(method, study.lr_experts, config.adapter.r, study.seeds[0], lr)
            for method, rates in searched_rates(config, store).items() for lr in rates]


def searched_rates(config: ExperimentConfig, store: CellStore | None = None) -> dict[str, list[float]]:
    """Per method, the grid plus up to ``study.lr_extend`` rates beyond whichever end of the grid holds its best
    validation answer NLL so far, one grid step at a time, until the best rate is inside the searched range.
    A best rate at the edge says only that the optimum may lie further out; a baseline tuned there and
    not beyond would lose for want of a wider grid."""
    grid = sorted(config.study.lr_grid)
    searched = {}
    for method in _trained_methods(config):
        rates = list(grid)
        while store is not None and len(rates) > 1 and len(rates) < len(grid) + config.study.lr_extend:
            scores = _validation_scores(config, store, method, rates)
            if scores is None:
                break
            beyond = _rate_beyond_edge(rates, pick_learning_rate(scores))
            if beyond is None:
                break
            rates = sorted([*rates, beyond])
        searched[method] = rates
    return searched


def _validation_scores(config: ExperimentConfig, store: CellStore, method: str, rates: list[float], *,
                       finished_only: bool = False) -> dict[float, float | None] | None:
    """Validation answer NLL per rate of one method's search; ``None`` while some of its cells have not run,
    unless ``finished_only`` (then the rates whose cells have)."""
    scores = {}
    for lr in rates:
        record = store.load(Cell(method, config.study.lr_experts, config.adapter.r, config.study.seeds[0], lr), config)
        if record is not None:
            scores[lr] = validation_answer_nll(record)
        elif not finished_only:
            return None
    return scores


def _rate_beyond_edge(rates: list[float], best: float | None) -> float | None:
    """The next rate past the end of sorted ``rates`` that holds ``best``: a step as wide as the last one there,
    rounded to one significant digit where that stays past the end (3e-2 after 3e-3 and 1e-2); ``None`` when
    ``best`` is inside, or every rate failed."""
    if best == rates[-1]:
        beyond = best * rates[-1] / rates[-2]
    elif best == rates[0]:
        beyond = best * rates[0] / rates[1]
    else:
        return None
    rounded = float(f"{beyond:.0e}")
    return rounded if not rates[0] <= rounded <= rates[-1] else beyond


def _trained_methods(config: ExperimentConfig) -> list[str]:
    study = config.study
    headline = study.headline_methods if study.headline_tasks else []
    return [method for method in dict.fromkeys([*study.methods, *headline]) if method != "base"]


def pick_learning_rate(validation_nll: Mapping[float, float | None]) -> float | None:
    """The rate with the lowest validation answer NLL (the smaller rate on a tie); ``None`` when every
    rate failed. NLL rather than accuracy: on a few hundred examples it separates rates that accuracy cannot."""
    scored = [(nll, lr) for lr, nll in validation_nll.items() if nll is not None]
    return min(scored)[1] if scored else None


def learning_rates(config: ExperimentConfig, store: CellStore, *, provisional: bool = False
                   ) -> dict[str, float | None] | None:
    """Each method's rate: ``train.lr`` without a grid, else chosen from the search's cell files (``None``
    while some of those have not run; a method whose every rate diverged gets ``None``). ``provisional``:
    once the grid has run, the best rate among the search's finished cells, for a report to show while the
    rates beyond the grid's edge are still to run (a study does not start its sweep on these)."""
    if not config.study.lr_grid:
        return dict.fromkeys(_trained_methods(config), config.train.lr)
    rates = {}
    for method, searched in searched_rates(config, store).items():
        scores = _validation_scores(config, store, method, searched, finished_only=provisional)
        if scores is None or not set(config.study.lr_grid) <= set(scores):
            return None
        rates[method] = pick_learning_rate(scores)
    return rates


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
                      for method in study.methods
                      if rates.get(method) is not None and study.in_sweep(method, n, seed)]
    return axes


def headline_cells(config: ExperimentConfig, rates: Mapping[str, float | None],
                   store: CellStore | None = None) -> list[Cell]:
    """Each of ``study.headline_tasks`` trained alone by each headline method; ``best-reading`` stands for the
    reading :func:`searched_best_reading` picks from the search's cells in ``store`` (left out while unknown)."""
    study = config.study
    methods = [searched_best_reading(config, store, rates) if method == BEST_READING else method
               for method in study.headline_methods]
    return [Cell(method, study.headline_experts, config.adapter.r, study.seeds[0], rates[method], task,
                 study.headline_steps)
            for task in study.headline_tasks for method in dict.fromkeys(methods)
            if method is not None and rates.get(method) is not None]


def searched_best_reading(config: ExperimentConfig, store: CellStore | None,
                          rates: Mapping[str, float | None]) -> str | None:
    """Among the study's readings of RadarGate (``radar`` and those of ``READINGS`` in ``study.methods``), the one
    with the lowest validation answer NLL at its chosen rate (``study.lr_experts`` experts, first seed), by
    :func:`best_reading`. A reading whose every rate diverged is out."""
    readings = [method for method in config.study.methods
                if (method == DEFAULT_READING or method in READINGS) and rates.get(method) is not None]
    if store is None or not readings:
        return None
    scores = {}
    for method in readings:
        record = store.load(Cell(method, config.study.lr_experts, config.adapter.r, config.study.seeds[0],
                                 rates[method]), config)
        scores[method] = validation_answer_nll(record) if record is not None else None
    return best_reading(scores)


def best_reading(scores: Mapping[str, float | None]) -> str | None:
    """The reading with the lowest validation answer NLL (the default reading on a tie, then the order given);
    ``None`` while a reading has no score yet, so that nothing is chosen on part of the evidence."""
    if any(score is None for score in scores.values()):
        return None
    order = list(scores)
    return min(order, key=lambda method: (scores[method], method != DEFAULT_READING, order.index(method)))
