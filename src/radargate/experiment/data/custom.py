"""Your own data: files or a Hub dataset read with ``datasets``, as tables of rows for :mod:`.sources`.

A source (``data.sources[]``) names a ``.jsonl``/``.json``, ``.csv`` or ``.parquet`` file (``path``), a folder
written by ``save_to_disk``, one file per split (``train_path``, ``validation_path``, ``test_path``), or a Hub
dataset (``hub``, ``subset``; ``datasets.load_dataset``). :func:`read_tables` returns its tables; the formats, splits,
caps and errors are :mod:`radargate.experiment.data.sources`' (the same for every source).

In CSV files every cell is read as text (a completion ``007`` stays ``007``), ``choices`` and ``messages`` are
JSON text (``["a", "b"]``), and an answer such as ``1`` is the choice ``"1"`` if there is one, else index 1:
when the choices are numbers, give the answer as the choice's text.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from radargate.experiment.config import SourceSettings

__all__ = ["READERS", "read_tables"]

READERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
"""File suffix -> the ``datasets`` builder that reads it."""


def read_tables(source: SourceSettings) -> list[tuple[str | None, str, Any]]:
    """``(split or None, label for errors, datasets.Dataset)`` per table of the source."""
    if source.hub:
        return _splits_of(_load_hub(source), f"Hub dataset {source.hub!r}")
    if source.train_path:
        paths = {"train": source.train_path, "validation": source.validation_path, "test": source.test_path}
        return [(split, path, _read_path(Path(path))) for split, path in paths.items() if path]
    path = Path(source.path)
    table = _read_path(path)
    return _splits_of(table, str(path)) if hasattr(table, "keys") else [(None, str(path), table)]


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
