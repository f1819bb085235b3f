"""The paper's headline replayed: each task trained alone, RadarGate's fit against each other gate per task,
counted as the paper counts and pooled over tasks."""

from __future__ import annotations

from collections import Counter

from radargate.experiment.report.comparison import markdown_table
from radargate.experiment.report.intervals import Difference
from radargate.experiment.report.study.differences import describe, difference
from radargate.experiment.report.study.gathered import Gathered


def headline_counts(found: Gathered) -> str | None:
    """The paper's form (RadarGate best in 90% of tasks) with the intervals' words: per task, then per gate,
    then every finished task's examples pooled into one interval per gate."""
    by_task = [_headline_records(found, task) for task in found.config.study.headline_tasks]
    verdicts = [v for v in map(_headline_verdicts, by_task) if v]
    if not verdicts:
        return None
    best = sum(all(d.verdict == "better" for d in v.values()) for v in verdicts)
    worse = sum(any(d.verdict == "worse" for d in v.values()) for v in verdicts)
    per_gate = []
    for method in [m for m in found.config.study.headline_methods if m != "radar"]:
        counted = Counter(v[method].verdict for v in verdicts if method in v)
        pooled = _headline_pooled(by_task, method)
        per_gate.append(f"against {method} better in {counted['better']}, no detectable difference in "
                        f"{counted['no detectable difference']}, worse in {counted['worse']}"
                        + (f"; all {pooled[1]} tasks pooled: {describe(pooled[0])}" if pooled else ""))
    return (f"The paper's headline replayed (each task trained alone, n={found.config.study.headline_experts}): "
            f"RadarGate fits better than every other gate in {best} of {len(verdicts)} tasks "
            f"({100 * best / len(verdicts):.0f}%; the paper reports 90%), worse than at least one in {worse}, "
            f"and otherwise not detectably different. By gate (fit NLL, RadarGate minus the gate): "
            + "; ".join(per_gate) + "." + _headline_completeness(found, len(verdicts)))


def _headline_completeness(found: Gathered, finished: int) -> str:
    planned = len(found.config.study.headline_tasks)
    return "" if finished == planned else (f" Only {finished} of the {planned} tasks have finished; rerun the study "
                                           "command for the rest.")


def _headline_records(found: Gathered, task: str) -> dict[str, dict]:
    return {cell.method: record for cell, record in found.headline.items()
            if cell.task == task and record and not record["failed"]}


def _headline_verdicts(records: dict[str, dict]) -> dict[str, Difference] | None:
    """RadarGate minus each other gate on one task's fit examples (``records``: that task's cells by method)."""
    if "radar" not in records or len(records) < 2:
        return None
    return {method: difference([records["radar"]], [record], "fit", "answer_nll")
            for method, record in records.items() if method != "radar"}


def _headline_pooled(by_task: list[dict[str, dict]], method: str) -> tuple[Difference, int] | None:
    """RadarGate minus ``method`` over the fit examples of every task both finished (examples are keyed by
    task, so pooling tasks is one paired comparison), and how many tasks that is."""
    pairs = [(records["radar"], records[method]) for records in by_task if "radar" in records and method in records]
    if not pairs:
        return None
    result = difference([radar for radar, _ in pairs], [other for _, other in pairs], "fit", "answer_nll")
    return (result, len(pairs)) if result is not None else None


def headline_section(found: Gathered) -> str:
    study = found.config.study
    if not study.headline_tasks:
        return ""
    others = [m for m in study.headline_methods if m != "radar"]
    rows = []
    for task in study.headline_tasks:
        verdicts = _headline_verdicts(_headline_records(found, task)) or {}
        rows.append([task, *(describe(verdicts.get(m), short=True) for m in others)])
    note = (f"Each of {len(study.headline_tasks)} BIG-bench tasks trained alone at n={study.headline_experts} "
            f"({study.headline_steps or found.config.train.steps} steps, each method at its chosen rate, seed "
            f"{study.seeds[0]}); fitting loss = answer NLL on the task's first {found.config.eval.fit_per_task} "
            "training examples after training, RadarGate minus each gate.")
    return "\n\n".join(["## The paper's headline, replayed", note, headline_counts(found) or "No task finished yet.",
                        markdown_table(["task", *(f"radar - {m} (fit NLL)" for m in others)], rows)])
