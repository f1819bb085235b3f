"""Unseen tasks chosen by a rule written down before any result (``docs/robustness-protocol.md``).

Zero-shot generalisation is a claim about tasks, so the held-out set must be wide, and it must not be picked
after seeing which tasks favour which gate. The rule:

1. **Candidates**: every BIG-bench multiple-choice task whose *family* (the name before ``/``) no training
   task and no replay task belongs to (siblings such as ``tracking_shuffled_objects/five_objects`` are the
   same task at another size), with at least ``min_examples`` examples and at most ``max_mean_choices``
   choices per example on average (each choice is one scored sequence: a 100-choice task would cost as much
   as fifty others).
2. **Kept**: the ``keep`` tasks (the study's original unseen tasks, a named subset for comparing old and new).
3. **One task per family** (families such as ``multiemo`` have a hundred near-copies): the member with the
   smallest ``sha256(salt + name)``.
4. **Families in hash order** (``sha256(salt + family)``), the first ``families`` not already kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

from radargate.experiment.data.bigbench import list_tasks, load_tasks
from radargate.experiment.data.examples import MCExample

SALT = "radargate-unseen-v1\0"


def family(task: str) -> str:
    """``multiemo/all_text_de`` -> ``multiemo``."""
    return task.split("/")[0]


def _rank(name: str) -> str:
    return hashlib.sha256((SALT + name).encode("utf-8")).hexdigest()


def held_out_tasks(
    examples: Mapping[str, Sequence[MCExample]],
    *,
    used: Iterable[str],
    keep: Sequence[str],
    families: int,
    min_examples: int = 30,
    max_mean_choices: float = 10.0,
) -> list[str]:
    """The held-out tasks by the module's rule, ``keep`` first, then the drawn ones in draw order.

    ``examples``: every candidate task's examples (``load_tasks``); ``used``: the tasks trained on or replayed.
    """
    excluded = {family(task) for task in used}
    clashing = [task for task in keep if family(task) in excluded]
    if clashing:
        raise ValueError(f"kept unseen task(s) {clashing} share a family with a training or replay task")
    eligible = [task for task, found in examples.items()
                if family(task) not in excluded and len(found) >= min_examples
                and sum(len(example.choices) for example in found) <= max_mean_choices * len(found)]
    members: dict[str, list[str]] = {}
    for task in eligible:
        members.setdefault(family(task), []).append(task)
    kept_families = {family(task) for task in keep}
    drawn = sorted((name for name in members if name not in kept_families), key=_rank)[:families]
    return [*keep, *(min(members[name], key=_rank) for name in drawn)]


def bigbench_held_out_tasks(*, used: Sequence[str], keep: Sequence[str], families: int) -> list[str]:
    """The rule applied to every BIG-bench multiple-choice task (``used`` and ``keep`` as in
    :func:`held_out_tasks`). Reads every task once (a few minutes)."""
    excluded = {family(task) for task in used}
    candidates = [task for task in list_tasks() if family(task) not in excluded]
    return held_out_tasks(load_tasks(candidates), used=used, keep=keep, families=families)
