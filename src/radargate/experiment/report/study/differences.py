"""Method minus reference on the cell records: the claims compared, their paired intervals and how they read.

Every section that states a difference uses these, so a verdict reads the same everywhere in the report.
"""

from __future__ import annotations

from collections.abc import Sequence

from radargate.experiment.cells import evaluation
from radargate.experiment.report.format import VERDICT_SHORT, signed_difference
from radargate.experiment.report.intervals import Difference, paired_contrast
from radargate.experiment.report.study.gathered import Gathered

REFERENCES = ("softmax", "topk", "base")
CLAIMS = (  # (label, split, metric): the paper's three claims, each measured on its own
    ("fit NLL", "fit", "answer_nll"),
    ("test NLL", "test", "answer_nll"),
    ("test acc", "test", "acc"),
    ("unseen NLL", "unseen", "answer_nll"),
    ("unseen acc", "unseen", "acc"),
)


def difference(a: Sequence[dict], b: Sequence[dict], split: str, metric: str) -> Difference | None:
    """``a`` minus ``b`` (cell records, seeds pooled per example), or ``None`` if either side lacks the split."""
    return contrast([(1.0, a), (-1.0, b)], split, metric)


def contrast(terms: Sequence[tuple[float, Sequence[dict]]], split: str, metric: str) -> Difference | None:
    evaluations = [(weight, [evaluation(r, split) for r in records]) for weight, records in terms]
    if any(not found or any(e is None for e in found) for _, found in evaluations):
        return None
    return paired_contrast(evaluations, metric)


def describe(found: Difference | None, *, short: bool = False) -> str:
    """``-0.052 [-0.071, -0.034] better``: accuracy in points, NLL in nats per answer token; ``-`` where no
    example has the metric (accuracy of completion data)."""
    if found is None or found.n == 0:
        return "-"
    verdict = VERDICT_SHORT[found.verdict] if short else found.verdict
    return (f"{signed_difference(found.metric, found.mean)} [{signed_difference(found.metric, found.low)}, "
            f"{signed_difference(found.metric, found.high)}] {verdict}")


def growth_lines(found: Gathered, axis: str, *claims: tuple[str, str]) -> list[str]:
    """RadarGate's margin over each gate at the largest n minus at the smallest, among the n where both have
    finished cells (a study under way compares the n it has)."""
    experts = sorted({cell.n for cell in found.sweep.get(axis, {})})
    lines = []
    for reference in ("softmax", "topk"):
        finished = [n for n in experts if found.sides(axis, "radar", n) and found.sides(axis, reference, n)]
        if len(finished) < 2:
            continue
        low, high = finished[0], finished[-1]
        for split, metric in claims:
            terms = [(1.0, found.sides(axis, "radar", high)), (-1.0, found.sides(axis, reference, high)),
                     (-1.0, found.sides(axis, "radar", low)), (1.0, found.sides(axis, reference, low))]
            result = contrast(terms, split, metric)
            if result is not None:
                lines.append(f"- vs {reference}, {split} {metric.replace('_', ' ')}, n={high} vs n={low}: "
                             f"{describe(result)}")
    return lines
