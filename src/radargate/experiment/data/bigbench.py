"""BIG-bench JSON tasks as multiple-choice examples with deterministic splits, offline.

**Source.** The JSON tasks (Apache-2.0) ship inside the PyPI sdist ``bigbench==1.0.0`` (358 MB), which is
downloaded once through the index's Simple API and read straight out of the tarball, never installed. Since
2026-12 the index this project's machines reach no longer serves it (only 0.0.1, without tasks): it loads where
the sdist is already cached, placed there by hand, or bundled, and elsewhere stops with the index's answer.
Cache layout, under
``<cache>/bigbench/`` (``<cache>`` as in :func:`radargate.experiment.data.cache_root`)::

    bigbench-1.0.0.tar.gz       the sdist, sha256-checked after download
    index.json                  task name -> tar member and example count; one ~20 s pass to build
    tasks/<name>/task.json      task files copied out of the tarball on first use

A gzip tarball has no random access, so every read is a sequential pass (~5 s); the index pass also copies
out the :data:`DEFAULT_SUITE` files, and later misses are copied out together in one pass.

**Bundled caches.** A cache with ``index.json`` and ``tasks/`` but no sdist, whose index lists the tasks it
holds under ``"bundled"`` (written by :func:`offline_files`, which ``radargate bundle pack`` uses), is read
as is: no download, and a task outside the bundle is a clear error instead of a fetch.

**Names.** ``<task>`` or ``<task>/<subtask>`` for tasks split into subtasks (``logical_deduction/
three_objects``); a parent name has no examples of its own. Only tasks whose examples all carry
``target_scores`` are multiple-choice; programmatic (``task.py``) tasks are not in the index.

**Examples.** Exact duplicates are dropped; so are examples with fewer than two choices or no single best
score. ``answer`` is the index of the highest score (first on ties, as BIG-bench does). ``choices`` are in a
stable order derived from sha256 of the example (BIG-bench also permutes, with NumPy's generator), because
some tasks list the right answer first (``date_understanding``: 364 of 369).

**Prompt** (zero-shot, as BIG-bench's ``JsonTask`` builds it, leading whitespace stripped)::

    task_prefix + example_input_prefix + input [+ choice_prefix + choice_prefix.join(choices)]
        + example_output_prefix

with the BIG-bench defaults ``""``, ``"\\nQ: "``, ``"\\n  choice: "`` and ``"\\nA: "``; the choices are
appended unless the task sets ``append_choices_to_input`` to false. A choice is scored as the continuation
``prompt + choice``, whitespace exactly as the task defines it; :meth:`MCExample.scoring_pairs` moves the
prompt's trailing space onto the choices for subword tokenizers.

**Splits.** BIG-bench has none: examples go to train / validation / test by the content hash of
:mod:`radargate.experiment.data.splits` (examples sharing an input, such as ``logical_deduction``'s several
questions about one paragraph, share a split). The example type and prompt format are
:mod:`radargate.experiment.data.examples`'.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from radargate.experiment.data import cache_root, fetch_distribution
from radargate.experiment.data.examples import MCExample, PromptFormat
from radargate.experiment.data.splits import split_examples
from radargate.files import atomic_write_bytes

__all__ = [
    "DEFAULT_SUITE",
    "fetch_bigbench",
    "list_tasks",
    "load_suite",
    "load_task",
    "load_tasks",
    "offline_files",
]

SDIST = "bigbench-1.0.0.tar.gz"
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
_INDEX_FORMAT = 1
_TASKS_DIR = "/bigbench/benchmark_tasks/"
_NAME_PART = re.compile(r"[A-Za-z0-9_.+-]+")

# The multi-task training suite, resolved against the sdist: logical_deduction exists only as three
# subtasks (different puzzles, all kept); elementary_math_qa has five renderings of the same 7688
# questions, of which only the plain one is kept (the hint variants state the computation, and mixing
# renderings would put one question in several splits).
DEFAULT_SUITE: tuple[str, ...] = (
    "social_iqa",
    "strategyqa",
    "winowhy",
    "logical_deduction/three_objects",
    "logical_deduction/five_objects",
    "logical_deduction/seven_objects",
    "date_understanding",
    "sports_understanding",
    "elementary_math_qa/question_only",
    "intent_recognition",
)


# ---------------------------------------------------------------------------------------------- cache


def fetch_bigbench(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the cached ``bigbench-1.0.0`` sdist, downloading it from PyPI (once, atomically) if missing."""
    return fetch_distribution("bigbench", SDIST, SDIST_SHA256, _bigbench_dir(cache_dir))


def list_tasks(cache_dir: str | os.PathLike[str] | None = None, *, multiple_choice_only: bool = True) -> list[str]:
    """Sorted task names in the sdist that have JSON examples (only multiple-choice ones by default)."""
    tasks = _index(cache_dir)["tasks"]
    return sorted(name for name, info in tasks.items() if info["multiple_choice"] or not multiple_choice_only)


def _bigbench_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    return cache_root(cache_dir) / "bigbench"


def _index(cache_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The task index, built on first use and cached as JSON next to the tarball (or a bundled cache's)."""
    bundled = _bundled_index(_bigbench_dir(cache_dir))
    if bundled is not None:
        return bundled
    tarball = fetch_bigbench(cache_dir)
    path = tarball.parent / "index.json"
    size = tarball.stat().st_size
    if path.is_file():
        index = json.loads(path.read_text(encoding="utf-8"))
        if index.get("format") == _INDEX_FORMAT and index.get("tarball_size") == size:
            return index
    index = {"format": _INDEX_FORMAT, "tarball_size": size, "tasks": _scan(tarball, set(DEFAULT_SUITE))}
    atomic_write_bytes(path, json.dumps(index, indent=1, sort_keys=True).encode("utf-8"))
    return index


def _bundled_index(root: Path) -> dict[str, Any] | None:
    """The index of a bundled cache (no sdist, an index marked ``bundled``), else None."""
    path = root / "index.json"
    if (root / SDIST).is_file() or not path.is_file():
        return None
    index = json.loads(path.read_text(encoding="utf-8"))
    return index if index.get("format") == _INDEX_FORMAT and "bundled" in index else None


def offline_files(names: Iterable[str], cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Path | bytes]:
    """What a cache needs to load the tasks ``names`` with no sdist and no network.

    Keys are paths relative to the cache root; values are the source file or, for the index, its content:
    the whole task index marked ``"bundled": [names]`` and each task's ``task.json``. Unknown names raise
    ValueError. Copying these under another root makes it a bundled cache (module docstring).
    """
    names = sorted(dict.fromkeys(names))
    index = _index(cache_dir)
    for name in names:
        _check_name(name, index["tasks"])
    bundled = {"format": _INDEX_FORMAT, "bundled": names, "tasks": index["tasks"]}
    files: dict[str, Path | bytes] = {
        "bigbench/index.json": json.dumps(bundled, indent=1, sort_keys=True).encode("utf-8")
    }
    for name, path in _task_paths(names, cache_dir).items():
        files[f"bigbench/tasks/{name}/task.json"] = path
    return files


def _task_name(member: str) -> str | None:
    """``x/bigbench/benchmark_tasks/a/b/task.json`` -> ``a/b``; None for any other member."""
    head, sep, rest = member.partition(_TASKS_DIR)
    if not sep or "/" in head or not rest.endswith("/task.json"):
        return None
    parts = rest.split("/")[:-1]
    ok = all(_NAME_PART.fullmatch(p) and p not in {".", ".."} for p in parts)
    return "/".join(parts) if ok else None


def _scan(tarball: Path, extract: set[str]) -> dict[str, dict[str, Any]]:
    """One pass over the tarball: index every task.json with examples, copy out those in ``extract``."""
    tasks: dict[str, dict[str, Any]] = {}
    for name, member, data in _task_files(tarball):
        examples = json.loads(data).get("examples") or []
        if not examples:
            continue
        mc = all(isinstance(e, dict) and isinstance(e.get("target_scores"), dict) for e in examples)
        tasks[name] = {"member": member, "examples": len(examples), "multiple_choice": mc}
        if name in extract:
            atomic_write_bytes(_extracted_path(tarball.parent, name), data)
    return tasks


def _task_files(tarball: Path, wanted: set[str] | None = None) -> Iterable[tuple[str, str, bytes]]:
    """Yield (task name, member, bytes) for task.json members, stopping once all ``wanted`` are seen."""
    remaining = None if wanted is None else set(wanted)
    with tarfile.open(tarball, mode="r|gz") as archive:
        for member in archive:
            name = _task_name(member.name) if member.isfile() else None
            if name is None or (remaining is not None and name not in remaining):
                continue
            handle = archive.extractfile(member)
            if handle is None:
                continue
            yield name, member.name, handle.read()
            if remaining is not None:
                remaining.discard(name)
                if not remaining:
                    return


def _extracted_path(root: Path, name: str) -> Path:
    return root / "tasks" / name / "task.json"


def _task_paths(names: Sequence[str], cache_dir: str | os.PathLike[str] | None) -> dict[str, Path]:
    """Paths of the extracted task.json files, copying the missing ones out in a single pass."""
    root = _bigbench_dir(cache_dir)
    paths = {name: _extracted_path(root, name) for name in names}
    missing = {name for name, path in paths.items() if not path.is_file()}
    bundled = _bundled_index(root)
    if missing and bundled is not None:
        raise FileNotFoundError(
            f"BIG-bench task(s) {', '.join(sorted(missing))} are not in {root}, a bundled cache that holds only "
            f"{', '.join(bundled['bundled'])}; pack a bundle whose config names them (radargate bundle pack)"
        )
    if missing:
        for name, _, data in _task_files(root / SDIST, missing):
            atomic_write_bytes(paths[name], data)
    return paths


# --------------------------------------------------------------------------------------------- tasks


def _check_name(name: str, tasks: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise a ValueError that names ``name`` and says what to use instead."""
    info = tasks.get(name)
    if info is not None and info["multiple_choice"]:
        return
    available = sorted(n for n, i in tasks.items() if i["multiple_choice"])
    if info is not None:
        raise ValueError(f"BIG-bench task {name!r} is not multiple-choice (its examples lack target_scores)")
    subtasks = [n for n in available if n.startswith(name + "/")]
    if subtasks:
        raise ValueError(f"BIG-bench task {name!r} is split into subtasks; use one of: {', '.join(subtasks)}")
    close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
    hint = f"closest: {', '.join(close)}; " if close else ""
    raise ValueError(
        f"unknown BIG-bench task {name!r}; {hint}{len(available)} multiple-choice tasks available "
        "(`radargate tasks` lists them)"
    )


def _example_id(task: str, text: str, scores: Mapping[str, float]) -> str:
    payload = json.dumps([task, text, sorted(scores.items())], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _make_example(task: str, raw: Mapping[str, Any], fmt: PromptFormat, shuffle: bool) -> MCExample | None:
    """Build one example, or None when it has no usable multiple-choice target."""
    text = str(raw["input"])
    scores = {str(k): float(v) for k, v in raw["target_scores"].items()}
    if len(scores) < 2 or max(scores.values()) <= min(scores.values()):
        return None
    example_id = _example_id(task, text, scores)
    best = max(scores, key=scores.__getitem__)
    choices = sorted(scores, key=lambda c: _sha(f"{example_id}\0{c}")) if shuffle else list(scores)
    return MCExample(
        task=task,
        id=example_id,
        input=text,
        prompt=fmt.render(text, choices),
        choices=tuple(choices),
        target_scores=tuple(scores[c] for c in choices),
        answer=choices.index(best),
    )


def _examples_from_task(name: str, task: Mapping[str, Any], shuffle: bool) -> list[MCExample]:
    fmt = PromptFormat.from_task(task)
    examples: dict[str, MCExample] = {}
    for raw in task["examples"]:
        example = _make_example(name, raw, fmt, shuffle)
        if example is not None:
            examples.setdefault(example.id, example)
    return list(examples.values())


def load_tasks(
    names: Iterable[str], cache_dir: str | os.PathLike[str] | None = None, *, shuffle_choices: bool = True
) -> dict[str, list[MCExample]]:
    """Examples of several multiple-choice tasks, in file order; unknown names raise ValueError.

    ``shuffle_choices=False`` keeps each example's choices in task.json order.
    """
    names = list(dict.fromkeys(names))
    tasks = _index(cache_dir)["tasks"]
    for name in names:
        _check_name(name, tasks)
    paths = _task_paths(names, cache_dir)
    return {name: _examples_from_task(name, json.loads(paths[name].read_bytes()), shuffle_choices) for name in names}


def load_task(
    name: str, cache_dir: str | os.PathLike[str] | None = None, *, shuffle_choices: bool = True
) -> list[MCExample]:
    """Examples of one multiple-choice task (``task`` or ``task/subtask``); see :func:`load_tasks`."""
    return load_tasks([name], cache_dir, shuffle_choices=shuffle_choices)[name]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_suite(
    names: Iterable[str] = DEFAULT_SUITE,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    max_per_split: int | Mapping[str, int] | None = None,
    min_test_per_task: int = 0,
) -> dict[str, list[MCExample]]:
    """Load several tasks and split them: ``{"train": [...], "validation": [...], "test": [...]}``."""
    tasks = load_tasks(names, cache_dir)
    examples = (example for task in tasks.values() for example in task)
    return split_examples(examples, fractions=fractions, seed=seed, max_per_split=max_per_split,
                          min_test_per_task=min_test_per_task)
