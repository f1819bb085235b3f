"""The paper's headline replayed: each task trained alone, RadarGate's fit against each other gate per task,
counted as the paper counts and pooled over tasks."""

from __future__ import annotations

from collections import Counter

from radargate.experiment.cells import Cell
from radargate.experiment.report.comparison import markdown_table
from radargate.experiment.report.intervals import Difference
from radargate.experiment.report.study.differences import describe, difference
from radargate.experiment.report.study.gathered import Gathered


def headline_counts(found: Gathered) -> str | None:
    """The paper's form (RadarGate best in 90% of tasks) with the intervals' words: per task, then per gate,
    then every finished task's examples pooled into one interval per gate."""
    study = found.config.study
    by_task = [task_records(found.headline, task) for task in study.headline_tasks]
    return replay_counts(by_task, "radar", [m for m in study.headline_methods if m != "radar"],
                         experts=study.headline_experts)


def replay_counts(by_task: list[dict[str, dict]], subject: str, others: list[str], *, experts: int) -> str | None:
    """The replay's counts for ``subject`` against ``others`` (``by_task``: each task's finished cells by method)."""
    verdicts = [v for v in (_headline_verdicts(records, subject) for records in by_task) if v]
    if not verdicts:
        return None
    best = sum(all(d.verdict == "better" for d in v.values()) for v in verdicts)
    worse = sum(any(d.verdict == "worse" for d in v.values()) for v in verdicts)
    per_gate = []
    for method in others:
        counted = Counter(v[method].verdict for v in verdicts if method in v)
        pooled = _headline_pooled(by_task, subject, method)
        per_gate.append(f"against {method} better in {counted['better']}, no detectable difference in "
                        f"{counted['no detectable difference']}, worse in {counted['worse']}"
                        + (f"; all {pooled[1]} tasks pooled: {describe(pooled[0])}" if pooled else ""))
    name = "RadarGate" if subject == "radar" else subject
    return (f"The paper's headline replayed (each task trained alone, n={experts}): "
            f"{name} fits better than every other gate in {best} of {len(verdicts)} tasks "
            f"({100 * best / len(verdicts):.0f}%; the paper reports 90%), worse than at least one in {worse}, "
            f"and otherwise not detectably different. By gate (fit NLL, {name} minus the gate): "
            + "; ".join(per_gate) + "." + _headline_completeness(len(by_task), len(verdicts)))


def _headline_completeness(planned: int, finished: int) -> str:
    return "" if finished == planned else (f" Only {finished} of the {planned} tasks have finished; rerun the study "
                                           "command for the rest.")


def task_records(cells: dict[Cell, dict | None], task: str) -> dict[str, dict]:
    """One task's finished replay cells by method."""
    return {cell.method: record for cell, record in cells.items()
            if cell.task == task and record and not record["failed"]}


def _headline_verdicts(records: dict[str, dict], subject: str) -> dict[str, Difference] | None:
    """``subject`` minus each other gate on one task's fit examples (``records``: that task's cells by method)."""
    if subject not in records or len(records) < 2:
        return None
    return {method: difference([records[subject]], [record], "fit", "answer_nll")
            for method, record in records.items() if method != subject}


def _headline_pooled(by_task: list[dict[str, dict]], subject: str, method: str) -> tuple[Difference, int] | None:
    """``subject`` minus ``method`` over the fit examples of every task both finished (examples are keyed by
    task, so pooling tasks is one paired comparison), and how many tasks that is."""
    pairs = [(records[subject], records[method]) for records in by_task if subject in records and method in records]
    if not pairs:
        return None
    result = difference([mine for mine, _ in pairs], [other for _, other in pairs], "fit", "answer_nll")
    return (result, len(pairs)) if result is not None else None


def headline_section(found: Gathered) -> str:
    study = found.config.study
    if not study.headline_tasks:
        return ""
    others = [m for m in study.headline_methods if m != "radar"]
    rows = []
    for task in study.headline_tasks:
        verdicts = _headline_verdicts(task_records(found.headline, task), "radar") or {}
        rows.append([task, *(describe(verdicts.get(m), short=True) for m in others)])
    note = (f"Each of {len(study.headline_tasks)} BIG-bench tasks trained alone at n={study.headline_experts} "
            f"({study.headline_steps or found.config.train.steps} steps, each method at its chosen rate, seed "
            f"{study.seeds[0]}); fitting loss = answer NLL on the task's first {found.config.eval.fit_per_task} "
            "training examples after training, RadarGate minus each gate.")
    return "\n\n".join(["## The paper's headline, replayed", note, headline_counts(found) or "No task finished yet.",
                        markdown_table(["task", *(f"radar - {m} (fit NLL)" for m in others)], rows)])
