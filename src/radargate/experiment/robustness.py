"""The robustness protocol (``docs/robustness-protocol.md``): which cells it runs, in which order, and the
one choice it makes, the best reading of RadarGate, on validation data alone.

1. The searched methods (the other readings and the signed gate) get the study's learning-rate search, at
   ``study.lr_experts`` experts and the first seed, beyond the grid's edge where their best rate lies there.
2. The best reading: among ``radar`` (scored by the study's own search, which chose its rate) and the searched
   readings, the one with the lowest validation answer NLL at its chosen rate (:func:`best_reading`).
3. The decisive cells: the best reading beside ``compared`` at each n with its seeds, evaluated zero-shot on the
   wider unseen set; methods the study searched keep the study's rate.
4. The replay of the paper's per-task fitting experiment for the best reading, only where it beats top-k on
   test answer NLL at the smallest n (:func:`replay_called_for`).

Its cells live in their own folder (``study.robustness.cells_dir``), made with a config derived from the study's
(:func:`robustness_config`): the same model, data, budget and grid, the wider unseen set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from radargate.experiment.cells import Cell, CellStore, evaluation
from radargate.experiment.config import READINGS, ExperimentConfig, RobustnessSettings
from radargate.experiment.data.held_out import bigbench_held_out_tasks
from radargate.experiment.plan import (
    DEFAULT_READING,
    headline_cells,
    learning_rate_cells,
    learning_rates,
    validation_answer_nll,
)
from radargate.experiment.report.intervals import paired_difference


def settings(config: ExperimentConfig) -> RobustnessSettings:
    if config.study.robustness is None:
        raise ValueError(f"study {config.name!r} has no study.robustness section")
    return config.study.robustness


def study_held_out_tasks(config: ExperimentConfig, *, families: int) -> list[str]:
    """The wider unseen set for the study of ``config`` by the held-out rule (``radargate tasks --held-out``): its
    training and replay tasks are used, its ``study.unseen_tasks`` kept."""
    used = [*config.data.tasks, *config.study.headline_tasks]
    return bigbench_held_out_tasks(used=used, keep=config.study.unseen_tasks, families=families)


def robustness_config(config: ExperimentConfig) -> ExperimentConfig:
    """The study's config for the robustness cells: its searched methods, seeds and wider unseen set (every split of
    an unseen task, as the protocol says), its own cell folder and run folders (``<output_dir>/<name>-robustness/``),
    no replay of its own."""
    robust = settings(config)
    cells_dir = robust.cells_dir or str(Path(config.study.report_dir) / f"{config.name}_robustness_cells")
    study = dataclasses.replace(
        config.study, methods=list(robust.searched), seeds=list(robust.seeds), unseen_tasks=list(robust.unseen_tasks),
        max_unseen_per_task=robust.max_unseen_per_task, unseen_split="all", cells_dir=cells_dir, headline_tasks=[],
        robustness=None)
    return dataclasses.replace(config, name=f"{config.name}-robustness", study=study)


def rates(config: ExperimentConfig, study_store: CellStore, store: CellStore) -> dict[str, float | None] | None:
    """Every method's rate: the study's own choice for the methods it searched, the robustness search's for the
    rest; ``None`` while either search is unfinished."""
    own, searched = learning_rates(config, study_store), learning_rates(robustness_config(config), store)
    if own is None or searched is None:
        return None
    return {**own, **searched}


def reading_scores(config: ExperimentConfig, study_store: CellStore, store: CellStore,
                   chosen: Mapping[str, float | None]) -> dict[str, float | None]:
    """Validation answer NLL of each reading at its chosen rate (``study.lr_experts`` experts, first seed):
    ``radar`` from the study's search, the other readings from the robustness search; ``None`` while unknown.
    Nothing else is read. A reading whose every rate diverged (chosen rate ``None``) is out of the running."""
    robust = robustness_config(config)
    readings = [DEFAULT_READING, *(m for m in settings(config).searched if m in READINGS)]
    scores = {}
    for method in readings:
        if method in chosen and chosen[method] is None:
            continue
        record = None
        if method in chosen:
            source, where = (config, study_store) if method == DEFAULT_READING else (robust, store)
            cell = Cell(method, config.study.lr_experts, config.adapter.r, source.study.seeds[0], chosen[method])
            record = where.load(cell, source)
        scores[method] = validation_answer_nll(record) if record is not None else None
    return scores


def decisive_cells(config: ExperimentConfig, best: str, chosen: Mapping[str, float | None]) -> list[Cell]:
    """The best reading beside ``compared``, at each n with its seeds, seed by seed (all n of a seed first)."""
    robust = settings(config)
    methods = list(dict.fromkeys([*robust.compared, best]))
    counts = dict(zip(robust.experts, robust.seed_counts, strict=True))
    return [Cell(method, n, config.adapter.r, seed, chosen[method])
            for index, seed in enumerate(robust.seeds) for n in robust.experts if index < counts[n]
            for method in methods if chosen.get(method) is not None]


def replay_called_for(config: ExperimentConfig, best: str, decisive: Mapping[Cell, dict | None]) -> bool | None:
    """Step 4's condition: the best reading beats top-k on test answer NLL at the smallest n (seeds pooled, the
    interval below zero). ``None`` until those cells have all run; ``False`` for the default reading, whose
    replay is the study's own."""
    if best == DEFAULT_READING:
        return False
    n = min(settings(config).experts)
    sides = {method: [record for cell, record in decisive.items() if cell.method == method and cell.n == n]
             for method in (best, "topk")}
    if any(not records or any(record is None for record in records) for records in sides.values()):
        return None
    finished = {method: [evaluation(record, "test") for record in records if not record["failed"]]
                for method, records in sides.items()}
    if not finished[best] or not finished["topk"]:
        return False
    return paired_difference(finished[best], finished["topk"], "answer_nll").verdict == "better"


def replay_cells(config: ExperimentConfig, best: str, chosen: Mapping[str, float | None]) -> list[Cell]:
    """The paper's per-task fitting experiment for the best reading alone, at its rate."""
    replay = dataclasses.replace(config, study=dataclasses.replace(config.study, headline_methods=[best]))
    return headline_cells(replay, chosen)


def search_cells(config: ExperimentConfig, store: CellStore | None = None) -> list[Cell]:
    """Step 1's cells (with ``store``: the rates beyond the grid's edge that its finished cells call for)."""
    return learning_rate_cells(robustness_config(config), store)
