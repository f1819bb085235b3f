"""Differences between methods with 95% confidence intervals, and the words the intervals allow.

Two methods evaluated on the same examples are compared example by example (a paired comparison):
each method's per-example value is first averaged over its seeds (pooled over seeds, so an example
counts once however many seeds ran), the per-example differences are formed, and their mean gets a
percentile interval from ``scipy.stats.bootstrap`` resampling examples. "better" and "worse" are said
only when the interval excludes zero; otherwise "no detectable difference".
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

HIGHER_IS_BETTER = {"acc": True, "acc_norm": True, "answer_nll": False, "exact_match": True}
"""Per-example metrics of ``evaluate.evaluate_examples`` and their direction."""
CONFIDENCE = 0.95
RESAMPLES = 10_000


@dataclass(frozen=True)
class Difference:
    """``mean`` of (method a - method b) over ``n`` paired examples, with its interval [low, high]."""

    metric: str
    mean: float
    low: float
    high: float
    n: int

    @property
    def verdict(self) -> str:
        """``better``/``worse`` for method a when the interval excludes zero, by the metric's direction."""
        if self.n == 0:
            return "no examples"
        if self.low <= 0 <= self.high:
            return "no detectable difference"
        return "better" if (self.low > 0) == HIGHER_IS_BETTER[self.metric] else "worse"


def per_example(evaluations: Sequence[dict], metric: str) -> dict[tuple[str, str], float]:
    """``(task, id)`` -> the metric averaged over the evaluations (one per seed) that scored the example;
    examples without the metric (``acc`` of a completion or chat example is None) are left out."""
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for evaluation in evaluations:
        for record in evaluation["examples"]:
            if record[metric] is not None:
                values[(record["task"], record["id"])].append(record[metric])
    return {key: float(np.mean(found)) for key, found in values.items()}


def paired_difference(
    a: Sequence[dict], b: Sequence[dict], metric: str, *, resamples: int = RESAMPLES, seed: int = 0
) -> Difference:
    """Method ``a`` minus method ``b`` on ``metric``; ``a`` and ``b`` are evaluation results (one per seed)
    of the same examples. Examples that only one side scored are an error: the pairing would be unfair."""
    return paired_contrast([(1.0, a), (-1.0, b)], metric, resamples=resamples, seed=seed)


def paired_contrast(
    terms: Sequence[tuple[float, Sequence[dict]]], metric: str, *, resamples: int = RESAMPLES, seed: int = 0
) -> Difference:
    """The mean over examples of ``sum(weight * value)`` over ``terms`` (weight, evaluations of one method),
    with its interval: ``(+1, a), (-1, b)`` is a difference; ``(+1, a at n=32), (-1, b at n=32), (-1, a at
    n=2), (+1, b at n=2)`` asks whether a's margin over b grows with n, on the same examples."""
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"metric={metric!r} is unknown; choose one of {', '.join(HIGHER_IS_BETTER)}")
    values = [per_example(evaluations, metric) for _, evaluations in terms]
    if any(found.keys() != values[0].keys() for found in values):
        raise ValueError(f"the sides scored different examples ({' vs '.join(str(len(v)) for v in values)}); "
                         "compare methods only on the same examples")
    keys = sorted(values[0])
    if not keys:  # no example has the metric (accuracy of completion data): nothing to compare
        return Difference(metric, math.nan, math.nan, math.nan, 0)
    differences = np.array([sum(weight * found[key] for (weight, _), found in zip(terms, values, strict=True))
                            for key in keys])
    mean = float(differences.mean())
    if np.ptp(differences) == 0:  # every resample has the same mean: the interval is that point
        return Difference(metric, mean, mean, mean, len(keys))
    interval = stats.bootstrap(
        (differences,), np.mean, confidence_level=CONFIDENCE, n_resamples=resamples, method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return Difference(metric, mean, float(interval.low), float(interval.high), len(keys))


def hierarchical_difference(
    a: Sequence[dict], b: Sequence[dict], metric: str, *, resamples: int = RESAMPLES, seed: int = 0
) -> Difference:
    """Method ``a`` minus ``b`` (evaluations, one per seed, of the same examples) with an interval that resamples
    tasks and each side's seeds, then examples within each drawn task: a claim about tasks (generalisation) needs
    the variation between tasks and between training runs in its interval, not only the examples'.

    A seed is one training run, scored on every task, so each resample draws each side's seeds once for all of its
    tasks: drawn afresh per task, one lucky run would count as many independent ones and its luck would shrink
    with the number of tasks. The point estimate is :func:`paired_difference`'s (every example counts once, each
    side averaged over its seeds); each resample recomputes it from the drawn tasks, seeds and examples.
    """
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"metric={metric!r} is unknown; choose one of {', '.join(HIGHER_IS_BETTER)}")
    tables = [_per_task_table(evaluations, metric) for evaluations in (a, b)]
    if tables[0].keys() != tables[1].keys() or any(tables[0][t][0] != tables[1][t][0] for t in tables[0]):
        raise ValueError("the sides scored different examples; compare methods only on the same examples")
    tasks = sorted(tables[0])
    sides = [[table[task][1] for task in tasks] for table in tables]  # per side, per task: [seeds, examples]
    mean = float(sum((x.mean(0) - y.mean(0)).sum() for x, y in zip(*sides, strict=True))
                 / sum(x.shape[1] for x in sides[0]))
    rng = np.random.default_rng(seed)
    drawn = rng.integers(len(tasks), size=(resamples, len(tasks)))
    seeds_drawn = [rng.integers(len(side), size=(resamples, len(side))) for side in (a, b)]  # per side, all tasks
    totals, counts = np.zeros(resamples), np.zeros(resamples)
    for index in range(len(tasks)):
        where = np.nonzero(drawn == index)  # (resample, slot) pairs that drew this task
        if not where[0].size:
            continue
        draws = where[0].size
        seed_means = [side[index][picked[where[0]]].mean(1)  # [draws, examples]: each resample's seeds averaged
                      for side, picked in zip(sides, seeds_drawn, strict=True)]
        examples = seed_means[0].shape[1]
        picked = rng.integers(examples, size=(draws, examples))
        sums = np.take_along_axis(seed_means[0] - seed_means[1], picked, axis=1).sum(1)
        np.add.at(totals, where[0], sums)
        np.add.at(counts, where[0], examples)
    statistics = totals / counts
    low, high = np.percentile(statistics, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
    examples = sum(x.shape[1] for x in sides[0])
    return Difference(metric, mean, float(low), float(high), examples)


def _per_task_table(evaluations: Sequence[dict], metric: str) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per task: its example ids (sorted) and the metric as ``[seeds, examples]``; every seed must have scored the
    same examples."""
    by_task: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for evaluation in evaluations:
        for record in evaluation["examples"]:
            if record[metric] is not None:
                by_task[record["task"]][record["id"]].append(record[metric])
    table = {}
    for task, examples in by_task.items():
        ids = sorted(examples)
        if len({len(examples[i]) for i in ids}) != 1 or len(examples[ids[0]]) != len(evaluations):
            raise ValueError(f"task {task!r}: not every seed scored the same examples")
        table[task] = (ids, np.array([examples[i] for i in ids], dtype=float).T)
    return table

