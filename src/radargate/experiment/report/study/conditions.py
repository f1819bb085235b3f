"""How the study ran: the "Setup" section (hardware, model, budget, tasks, whether the budget teaches) and the
"Time and hardware" section (each cell's wall time)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from radargate.experiment.evaluate import mean
from radargate.experiment.report.comparison import markdown_table
from radargate.experiment.report.format import number
from radargate.experiment.report.study.differences import describe, difference
from radargate.experiment.report.study.gathered import Gathered


def setup_section(found: Gathered) -> str:
    config = found.config
    records = found.records()
    hardware = sorted({r["hardware"] for r in records.values() if r.get("hardware")})
    test_counts = _examples_per_task(found.base, "test")
    unseen_counts = _examples_per_task(found.base, "unseen")
    study, train, data = config.study, config.train, config.data
    return "\n".join([
        "## Setup", "",
        f"- **Hardware:** {'; '.join(hardware) or '-'}",
        f"- **Model:** {config.model.name}; adapters on {', '.join(config.adapter.target_modules)}, "
        f"expert rank r={config.adapter.r} (alpha {config.adapter.alpha}), load-balance weight "
        f"{config.adapter.load_balance_weight}",
        f"- **Budget:** {train.steps} steps x batch {train.batch_size} x up to {data.max_length} tokens, "
        f"{train.warmup_steps} warm-up steps, precision {train.precision}; up to {data.max_train_per_task} training "
        f"examples per task",
        f"- **Training tasks ({len(data.tasks)}):** {', '.join(data.tasks)}",
        f"- **Test examples per task:** {test_counts}",
        f"- **Unseen tasks, zero-shot:** {unseen_counts}",
        f"- **Fit:** answer NLL on the first {config.eval.fit_per_task} training examples of each task, after "
        "training, in eval mode",
        f"- **Sweep:** methods {', '.join(study.methods)} x n in {study.experts} x seeds {study.seeds}, "
        f"axes {', '.join(study.axes)}" + (f" (total rank {study.total_rank})" if "fixed_total_rank" in study.axes
                                           else ""),
        f"- **Cells finished:** {len(records)}",
        "",
        _budget_text(found),
    ])


def _examples_per_task(record: dict | None, split: str) -> str:
    scores = (record or {}).get("metrics", {}).get(split)
    if not scores:
        return "-"
    per_task = scores.get("per_task", {})
    return ", ".join(f"{task} {values['n']}" for task, values in per_task.items()) + f" ({scores['n']} in all)"


def _validation_nll(records: list[dict]) -> float:
    """The mean last validation answer NLL of a method's cells; infinite (ranked last) where none has one."""
    value = mean(r["metrics"]["validation"][-1].get("macro_answer_nll") for r in records if r["metrics"]["validation"])
    return math.inf if value is None else value


def _budget_text(found: Gathered) -> str:
    """Whether the budget teaches the tasks: the best method at the search's n against the base model."""
    axis = next(iter(found.sweep), None)
    if axis is None or not found.base:
        return "Whether the budget learns is shown once the base model and the sweep have run."
    n = found.config.study.lr_experts if found.config.study.lr_experts in found.config.study.experts else max(
        found.config.study.experts)
    candidates = {m: found.sides(axis, m, n) for m in found.config.study.methods if m != "base"}
    candidates = {m: records for m, records in candidates.items() if records}
    if not candidates:
        return "Whether the budget learns is shown once the sweep's cells have run."
    best = min(candidates, key=lambda m: _validation_nll(candidates[m]))
    nll = difference(candidates[best], [found.base], "test", "answer_nll")
    acc = difference(candidates[best], [found.base], "test", "acc")
    curves = "; ".join(f"{m} " + " -> ".join(f"{v['macro_answer_nll']:.3f}" for v in records[0]["metrics"]["validation"]
                                              if v.get("macro_answer_nll") is not None)
                       for m, records in candidates.items())
    steps = [v["step"] for v in candidates[best][0]["metrics"]["validation"]]
    return (f"Whether the budget teaches the tasks at all: the method with the best validation answer NLL at n={n} "
            f"({best}) against the untrained base model on the test split: answer NLL {describe(nll)}, accuracy "
            f"{describe(acc)}. Validation answer NLL at steps {', '.join(map(str, steps))} (first seed): {curves}. "
            "Where it still falls at the last step, a longer budget would fit more; the budget was set by the "
            "time a cell may take on the machine it was planned for, and every method gets the same one.")


def timing_section(rows: dict[str, dict[str, Any]]) -> str:
    by_part: dict[str, list[float]] = defaultdict(list)
    for row in rows.values():
        if row["wall_s"] is not None:
            by_part[row["part"]].append(row["wall_s"])
    total = sum(sum(values) for values in by_part.values())
    lines = [f"- {part}: {len(values)} cells, {sum(values) / 60:.1f} min "
             f"(mean {statistics.mean(values):.0f} s per cell)"
             for part, values in sorted(by_part.items())]
    per_cell = markdown_table(
        ["cell", "wall s", "of which training s", "hardware"],
        [[name, number(row["wall_s"], ".0f"), number(row["train_s"], ".0f"), row["hardware"] or "-"]
         for name, row in sorted(rows.items())])
    return "\n".join(["## Time and hardware", "",
                      f"Wall time of every finished cell (training, test and unseen evaluation), summed: "
                      f"{total / 60:.1f} min; cells that ran in parallel overlap in real time.", "", *lines, "",
                      "<details><summary>Per cell</summary>", "", per_cell, "", "</details>"])
