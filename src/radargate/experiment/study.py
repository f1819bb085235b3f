"""The scaling study: does RadarGate fit, generalise and scale better than weighted-sum gates?

``radargate study --config configs/study.yaml`` runs, in this order, cells (``radargate.experiment.cells``)
that do not have a result file yet:

1. the untrained base model, and the learning-rate search: each method at ``study.lr_experts`` experts,
   first seed, at every rate of ``study.lr_grid``, and beyond the grid's end where a method's best rate
   lies there (``study.lr_extend``); each method's rate is the one with the lowest validation answer NLL
   (:func:`pick_learning_rate`);
2. the sweep at those rates, seed by seed: every method x experts, on each axis (``fixed_r`` keeps each
   expert's rank; ``fixed_total_rank`` sets ``r = total_rank / n``, skipping ``n`` that do not divide
   it; ``lora`` is PEFT's LoRA at rank ``n * r``, the same trainable width), the first two seeds first;
3. the paper's per-task fitting experiment (``study.headline_tasks``, each task trained alone), then the
   remaining seeds of the sweep;
4. with ``study.robustness``, the robustness protocol's cells (``radargate.experiment.robustness``), in their own
   folder.

Each finished cell writes its file under ``study.cells_dir`` at once (and, with ``commit``, commits it),
so a study spread over sessions and machines resumes from a fresh clone and runs only missing cells;
with ``report_only`` nothing runs and the report is rebuilt from the files alone. ``workers`` > 1 runs
cells in that many processes (a GPU has room for several of these small models); ``time_limit_s``
stops starting new cells after that long, so a session or a 10-minute machine call ends cleanly.
"""

from __future__ import annotations

import copy
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch

from radargate.experiment import robustness
from radargate.experiment.cells import (
    Cell,
    CellStore,
    cells_directory,
    check_unseen_lengths,
    run_cell,
    study_data_versions,
    write_record,
)
from radargate.experiment.config import ExperimentConfig
from radargate.experiment.data.sources import load_splits
from radargate.experiment.plan import (
    BASE,
    best_reading,
    headline_cells,
    learning_rate_cells,
    learning_rates,
    sweep_cells,
)
from radargate.experiment.report.study import write_study_report
from radargate.logs import quiet_bitsandbytes_kernel_hint


def study(config: ExperimentConfig, *, workers: int = 1, time_limit_s: float | None = None, commit: bool = False,
          report_only: bool = False) -> Path:
    """Run the missing cells (unless ``report_only``), then write the report from the cell files."""
    store = CellStore(cells_directory(config))
    if not report_only:
        runner = CellRunner(config, store, workers=workers, time_limit_s=time_limit_s, commit=commit)
        runner.run([BASE, *learning_rate_cells(config)])
        for _ in range(config.study.lr_extend):  # rates beyond the grid's edge, where the best one lies there
            runner.run(learning_rate_cells(config, store))
        rates = learning_rates(config, store)
        if rates is not None:
            sweep = _unique(cell for cells in sweep_cells(config, rates).values() for cell in cells)
            early = config.study.seeds[:2]
            runner.run([cell for cell in sweep if cell.seed in early])
            runner.run(headline_cells(config, rates, store))
            runner.run([cell for cell in sweep if cell.seed not in early])
            if config.study.robustness is not None:
                _run_robustness(config, store, runner)
        if runner.left:
            print(f"radargate study: time limit reached with {runner.left} cells not started; "
                  "run the same command again to go on", file=sys.stderr)
    return write_study_report(config, store)


def _run_robustness(config: ExperimentConfig, study_store: CellStore, study_runner: CellRunner) -> None:
    """The protocol's steps in order; each waits for the cells the one before it needs."""
    derived = robustness.robustness_config(config)
    store = CellStore(cells_directory(derived))
    runner = study_runner.alongside(derived, store)
    try:
        runner.run(robustness.search_cells(config))
        for _ in range(config.study.lr_extend):
            runner.run(robustness.search_cells(config, store))
        chosen = robustness.rates(config, study_store, store)
        best = best_reading(robustness.reading_scores(config, study_store, store, chosen or {}))
        if chosen is None or best is None:
            return
        decisive = robustness.decisive_cells(config, best, chosen)
        runner.run(decisive)
        if robustness.replay_called_for(config, best, {cell: store.load(cell, derived) for cell in decisive}):
            runner.run(robustness.replay_cells(config, best, chosen))
    finally:
        study_runner.left += runner.left


def _unique(cells: Iterable[Cell]) -> list[Cell]:
    return list(dict.fromkeys(cells))


class CellRunner:
    """Runs cells that have no file yet, inline or in worker processes, and files each result as it lands."""

    def __init__(self, config: ExperimentConfig, store: CellStore, *, workers: int, time_limit_s: float | None,
                 commit: bool) -> None:
        if workers < 1:
            raise ValueError(f"workers={workers} is not allowed; give 1 or more")
        if time_limit_s is not None and time_limit_s <= 0:
            raise ValueError(f"time limit={time_limit_s} s is not allowed; give a positive number of seconds")
        self.config, self.store, self.workers, self.commit = config, store, workers, commit
        self.deadline = time.monotonic() + time_limit_s if time_limit_s else None
        self.left = 0
        self.splits: dict[tuple[str, ...], dict[str, list]] = {}
        self.unseen_checked = False

    def alongside(self, config: ExperimentConfig, store: CellStore) -> CellRunner:
        """A runner for another set of cells (``config``, ``store``) with this one's workers, commits and deadline."""
        other = copy.copy(self)
        other.config, other.store, other.left, other.splits = config, store, 0, {}
        other.unseen_checked = False
        return other

    def run(self, cells: list[Cell]) -> None:
        missing = _unique(cell for cell in cells if self.store.load(cell, self.config) is None)
        if missing:  # new cells must be made from the same generated rows as the ones already there
            self.store.check_versions(study_data_versions(self.config), "the installed packages")
            if not self.unseen_checked:
                check_unseen_lengths(self.config)
                self.unseen_checked = True
        if self.workers == 1 or len(missing) <= 1:
            for index, cell in enumerate(missing):
                if self._out_of_time():
                    self.left += len(missing) - index
                    return
                self._file(run_cell(self.config, cell, self._splits_for(cell)))
            return
        self._run_in_processes(missing)

    def _run_in_processes(self, cells: list[Cell]) -> None:
        queue = list(cells)
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=context,
                                 initializer=quiet_bitsandbytes_kernel_hint) as pool:
            running: set[Future] = set()
            while queue or running:
                while queue and len(running) < self.workers and not self._out_of_time():
                    running.add(pool.submit(_run_cell_in_worker, self.config.to_dict(), queue.pop(0),
                                            self.threads_per_worker))
                if not running:
                    break
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    self._file(future.result())
        self.left += len(queue)

    @property
    def threads_per_worker(self) -> int:
        """This process's torch threads shared out among the workers: with torch's default of one thread per
        core in every worker, two workers on two cores ran each cell about four times slower than one alone."""
        return max(1, torch.get_num_threads() // self.workers)

    def _out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _splits_for(self, cell: Cell) -> dict[str, list]:
        config = cell.config(self.config)
        key = tuple(config.data.task_names)
        if key not in self.splits:
            self.splits[key] = load_splits(config)
        return self.splits[key]

    def _file(self, record: dict[str, Any]) -> None:
        path = write_record(self.store, record)
        status = "failed" if record["failed"] else "done"
        print(f"radargate study: cell {record['cell']['name']} {status} "
              f"({(record['timings']['train_and_test_s'] or 0):.0f} s): {path}", file=sys.stderr)
        if self.commit:
            commit_file(path, f"study {self.config.name}: cell {record['cell']['name']} ({status})")


def _run_cell_in_worker(config_values: dict[str, Any], cell: Cell, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    return run_cell(ExperimentConfig.from_dict(config_values), cell)


def commit_file(path: Path, message: str) -> None:
    """Commit one file alone (whatever else is staged stays staged); a failure is reported, not fatal:
    the file is on disk and the next commit can take it."""
    folder = path.parent
    for command in (["git", "add", "--", path.name], ["git", "commit", "-q", "-m", message, "--", path.name]):
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
        if done.returncode:
            print(f"radargate study: could not commit {path}: {done.stderr.strip() or done.stdout.strip()}",
                  file=sys.stderr)
            return
