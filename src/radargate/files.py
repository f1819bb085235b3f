"""Atomic file writes (readers see the old file or the new one, never half of one) and strict JSON.

Every JSON file the project writes parses with a strict parser: a float that is not finite (NaN,
infinity) is written as ``null``, never as the ``NaN``/``Infinity`` literals that Python's ``json``
emits by default and that ``jq`` and most other parsers reject. Where the non-finite value itself
matters (a skipped training step), the writer records it beside the ``null`` as a string.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)``, fsync, then rename onto ``path`` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with open(tmp, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except OSError as error:  # a failed write() names no file: name the one being written
        raise OSError(error.errno, error.strerror, str(path)) from error
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_directory(path.parent)


def atomic_write_directory(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(fresh_folder)`` beside ``path``, then swap the folder in with two renames.

    A failed write (a full or read-only disk, or any error ``write`` raises) leaves the previous folder as
    it was and no half-written one. A crash between the renames leaves it as ``<path>.old``, which
    :func:`latest_directory` still finds.
    """
    path = Path(path)
    fresh, old = path.with_name(f"{path.name}.tmp"), path.with_name(f"{path.name}.old")
    shutil.rmtree(fresh, ignore_errors=True)
    try:
        fresh.mkdir()
        write(fresh)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    fresh.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def latest_directory(path: str | Path) -> Path | None:
    """The folder :func:`atomic_write_directory` wrote last (``<path>.old`` after a crash between its
    renames), or ``None`` if there is none."""
    path = Path(path)
    return next((folder for folder in (path, path.with_name(f"{path.name}.old")) if folder.is_dir()), None)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def strict_json(value: Any, *, indent: int | None = None) -> str:
    """``json.dumps`` with non-finite floats as ``null`` (``allow_nan=False`` guards the rest)."""
    return json.dumps(finite_or_none(value), indent=indent, allow_nan=False)


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float, however deeply nested, replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def read_json(path: str | Path) -> Any:
    """A JSON file's value; a damaged one is a ValueError that names the file (a bare JSONDecodeError does not)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); it is damaged: move it away or restore it") from None


def atomic_write_json(path: str | Path, value: Any) -> None:
    atomic_write_text(path, strict_json(value, indent=1) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
