"""reasoning-gym's procedural generators (``reasoning-gym==0.1.25``, Apache-2.0) as completion sources.

A source ``{package: reasoning_gym, task: <generator>, config: {...}, size: N, seed: S}`` draws ``N`` entries from
``reasoning_gym.create_dataset(task, size=N, seed=S, **config)``: ``config`` holds the generator's own settings
(its ``<Name>Config`` dataclass; ``radargate tasks --reasoning-gym`` lists the generators). Nothing is fetched: the
generators ship in the installed package.

**Rows** are completions: the prompt is the question (trailing whitespace dropped) plus one fixed answer cue,
:data:`ANSWER_CUE`; the completion is ``" " + answer`` (the end-of-sequence token follows, as for every completion
row). Entries whose question was already drawn are dropped, the first kept in the generator's order; the content
hash split (:mod:`radargate.experiment.data.splits`) then applies as to any source without splits.

**Seed.** Unless given, a source's seed is :func:`default_seed` of its task name: the first 4 bytes of
``sha256(task)`` as a big-endian integer, the same in every process (Python's ``hash()`` is salted per process).

**Determinism.** The rows depend only on the task, its settings and the installed reasoning-gym version, which
every run and study cell records (:func:`version`); a study refuses a cell made with another version than its
siblings (``radargate.experiment.cells``). Generators run in a child process with ``PYTHONHASHSEED=0``
(:func:`prepare`), because some iterate over sets of strings, whose order would otherwise change from process to
process; that order also depends on the Python version's string hash (CPython 3.11 and later share one, 3.10's
differs). Some draw from Python's global random generator besides their own, which :func:`entries` seeds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import importlib.metadata
import json
import os
import random
import subprocess
import sys
import typing
from collections.abc import Iterable, Mapping
from typing import Any

SourceSettings = Any
"""A ``radargate.experiment.config.SourceSettings`` (not imported: the config imports this module)."""

__all__ = ["ANSWER_CUE", "DEFAULT_SIZE", "completion_rows", "default_seed", "entries", "generators", "prepare",
           "typed_config", "version"]

DISTRIBUTION = "reasoning-gym"
ANSWER_CUE = "\nAnswer:"
DEFAULT_SIZE = 1000
"""Entries drawn when a source gives no ``size``."""


def version() -> str:
    """The installed reasoning-gym's version (its module's ``__version__`` lags behind: 0.1.19 in 0.1.25)."""
    return importlib.metadata.version(DISTRIBUTION)


def default_seed(task: str) -> int:
    """A generator's seed when its source gives none: the first 4 bytes of ``sha256(task)``, big-endian."""
    return int.from_bytes(hashlib.sha256(task.encode("utf-8")).digest()[:4], "big")


def generators() -> list[str]:
    """Every registered generator's name, sorted."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def _config_class(task: str) -> type:
    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        close = difflib.get_close_matches(task, list(DATASETS), n=3, cutoff=0.6)
        hint = f"closest: {', '.join(close)}; " if close else ""
        raise ValueError(f"reasoning_gym task {task!r} is unknown; {hint}choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[task][1]


def settings_of(task: str) -> list[str]:
    """The settings a source's ``config`` may give for ``task`` (its config class's fields but ``seed`` and
    ``size``, which are the source's own)."""
    return [f.name for f in dataclasses.fields(_config_class(task)) if f.name not in ("seed", "size")]


def typed_config(task: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` checked against the generator's settings, YAML text read as each setting's type.

    A config file's values arrive as text (``"3"``): a setting whose default is not text reads it as YAML
    (``3`` -> 3, ``[1, 2]`` -> a list). Unknown generators and settings raise a one-line ValueError that lists
    what exists.
    """
    cls = _config_class(task)
    allowed = settings_of(task)
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ValueError(f"reasoning_gym task {task!r} has no setting(s) {', '.join(unknown)}; its settings: "
                         f"{', '.join(allowed)}")
    defaults = {f.name: _default(f) for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    return {name: _typed(value, defaults.get(name), hints.get(name)) for name, value in config.items()}


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # a hint naming something its module does not import: fall back on the defaults
        return {}


def _typed(value: Any, default: Any, hint: Any) -> Any:
    """YAML text as the setting's type, unless the setting is text."""
    if isinstance(value, list):
        element = default[0] if isinstance(default, (list, tuple)) and default else None
        return [_typed(item, element, None) for item in value]
    if not isinstance(value, str) or isinstance(default, str) or hint is str:
        return value
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _for_generator(task: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Lists where the generator's default is a tuple become tuples (YAML and JSON have no tuples)."""
    defaults = {f.name: _default(f) for f in dataclasses.fields(_config_class(task))}
    return {name: tuple(value) if isinstance(value, list) and isinstance(defaults.get(name), tuple) else value
            for name, value in config.items()}


def entries(task: str, *, size: int, seed: int, config: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """``size`` entries of generator ``task`` (``question``, ``answer``, ``metadata``), in the generator's order.

    A setting the generator refuses (its own ``validate()``) raises a one-line ValueError naming the task. Python's
    global random generator is seeded with ``seed`` meanwhile (and restored after), because some generators draw
    from it instead of their own.
    """
    import reasoning_gym

    settings = typed_config(task, config or {})
    state = random.getstate()
    random.seed(seed)  # some generators draw from the global generator too (list_functions in 0.1.25)
    try:
        dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **_for_generator(task, settings))
        return [dataset[index] for index in range(size)]
    except (AssertionError, ValueError, TypeError, KeyError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"reasoning_gym task {task!r} with settings {dict(settings)} failed: {reason}") from None
    finally:
        random.setstate(state)


def source_seed(source: SourceSettings) -> int:
    return source.seed if source.seed is not None else default_seed(source.task)


Request = tuple[str, int, int, str]
"""What decides a source's rows: (task, size, seed, its settings as sorted JSON)."""
_ROWS: dict[Request, list[dict[str, str]] | str] = {}
"""Rows already generated in this process (or the one-line error of a generator that failed)."""


def request_of(source: SourceSettings) -> Request:
    size = source.size if source.size is not None else DEFAULT_SIZE
    return source.task, size, source_seed(source), json.dumps(source.config, sort_keys=True)


def completion_rows(source: SourceSettings) -> list[dict[str, str]]:
    """The source's rows (module docstring): ``prompt`` = question + :data:`ANSWER_CUE`, ``completion`` =
    ``" " + answer``; a question seen before is dropped. Generated once per process (:func:`prepare`)."""
    request = request_of(source)
    prepare([source])
    found = _ROWS[request]
    if isinstance(found, str):
        raise ValueError(found)
    return [dict(row) for row in found]


def prepare(sources: Iterable[SourceSettings]) -> None:
    """Generate the rows of every source not generated yet, in one child process whose string hashing is fixed
    (``PYTHONHASHSEED=0``; in this process already when it was started so).

    Some generators iterate over sets of strings (``isomorphic_strings``, ``list_functions`` in 0.1.25), whose
    order follows Python's per-process hash salt: generated in the calling process, their rows would differ
    from one run to the next.
    """
    requests = list(dict.fromkeys(request_of(source) for source in sources))
    missing = [request for request in requests if request not in _ROWS]
    if not missing:
        return
    if not sys.flags.hash_randomization:  # this process was started with PYTHONHASHSEED=0
        found = [_generate(request) for request in missing]
    else:
        found = _generate_in_child(missing)
    _ROWS.update(zip(missing, found, strict=True))


HASH_SEED = "0"
_CHILD = "from radargate.experiment.data.reasoning_gym import _child_main; _child_main()"


def _generate_in_child(requests: list[Request]) -> list[list[dict[str, str]] | str]:
    env = {**os.environ, "PYTHONHASHSEED": HASH_SEED}
    done = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(requests), capture_output=True,
                          text=True, encoding="utf-8", env=env, check=False)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"reasoning-gym's generators failed in their process ({last})")
    return json.loads(done.stdout)


def _child_main() -> None:
    """The child of :func:`_generate_in_child`: requests as JSON on stdin, rows (or errors) as JSON on stdout."""
    requests = [tuple(request) for request in json.loads(sys.stdin.read())]
    with contextlib.redirect_stdout(sys.stderr):  # what generators print must not reach the answer
        found = [_generate(request) for request in requests]
    sys.stdout.write(json.dumps(found, ensure_ascii=False))


def _generate(request: Request) -> list[dict[str, str]] | str:
    """One source's rows, or its one-line error."""
    task, size, seed, config = request
    try:
        drawn = entries(task, size=size, seed=seed, config=json.loads(config))
    except ValueError as error:
        return str(error)
    rows: dict[str, dict[str, str]] = {}
    for number, entry in enumerate(drawn):
        question, answer = entry.get("question"), entry.get("answer")
        if not isinstance(question, str) or answer is None:
            return (f"reasoning_gym task {task!r} gives entries without a text question and answer (entry {number}: "
                    f"answer {answer!r}; it is scored by its own checker), so it cannot be a completion source")
        rows.setdefault(question, {"prompt": question.rstrip() + ANSWER_CUE, "completion": " " + str(answer)})
    return list(rows.values())


def generator_lengths(tokenizer, *, sample: int = 20) -> list[tuple[str, float | None, float | None, str]]:
    """``(generator, median prompt tokens, median answer tokens, note)`` for every generator, from ``sample``
    entries at its default settings and seed (what ``radargate tasks --reasoning-gym`` prints).

    Prompt tokens as trained (with the tokenizer's special tokens), answer tokens of ``" " + answer`` without the
    end-of-sequence token. A generator that fails (one needs settings, some give no answer) gets ``None`` and the
    reason in ``note``; what generators print is swallowed.
    """
    import statistics
    import types

    sources = [types.SimpleNamespace(task=task, size=sample, seed=None, config={}) for task in generators()]
    prepare(sources)
    table = []
    for task, source in zip(generators(), sources, strict=True):
        try:
            rows = completion_rows(source)
        except Exception as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            table.append((task, None, None, reason.removeprefix(f"reasoning_gym task {task!r} ")))
            continue
        prompts = [len(tokenizer(row["prompt"], add_special_tokens=True)["input_ids"]) for row in rows]
        answers = [len(tokenizer(row["completion"], add_special_tokens=False)["input_ids"]) for row in rows]
        note = f"{len(rows)} distinct questions of {sample}" if len(rows) < sample else ""
        table.append((task, statistics.median(prompts), statistics.median(answers), note))
    return table
