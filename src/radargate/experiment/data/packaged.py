"""The data sets that ship in a PyPI package, one line each: ``SourceSettings.package`` names one of them.

Each entry says the rows' format, how to make a source's rows (dicts the format's row reader takes,
:mod:`radargate.experiment.data.sources`), how to check the source's settings when the config is read, and which
installed distribution's version a run records (so a study can refuse cells made from other rows). A new packaged
source is one module beside this one and one line in :data:`PACKAGED`.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from radargate.experiment.data import gsm8k, reasoning_gym

SourceSettings = Any
"""A ``radargate.experiment.config.SourceSettings`` (not imported: the config imports this module)."""

__all__ = ["PACKAGED", "Packaged", "data_versions"]


@dataclass(frozen=True)
class Packaged:
    format: str
    """The format of its rows (``completion``, ``chat`` or ``multiple_choice``)."""
    rows: Callable[[SourceSettings], list[dict[str, Any]]]
    settings: tuple[str, ...] = ()
    """The ``SourceSettings`` fields of its own (``task``, ``config``, ...); other sources must leave them empty."""
    check: Callable[[SourceSettings], None] | None = None
    """Called when the config is read: refuses settings that cannot work (a one-line ValueError)."""
    distribution: str = ""
    """The installed distribution whose version decides the rows (recorded in runs and study cells)."""
    prepare: Callable[[list[SourceSettings]], None] | None = None
    """Called with all of a config's sources of this package before their rows are asked for (one batch)."""


def _gsm8k_rows(source: SourceSettings) -> list[dict[str, Any]]:
    return gsm8k.completion_rows()


def _check_reasoning_gym(source: SourceSettings) -> None:
    if not source.task:
        raise ValueError(f"data.sources[{source.name}] has package: reasoning_gym but no task; name a generator "
                         "(radargate tasks --reasoning-gym lists them)")
    source.config = reasoning_gym.typed_config(source.task, source.config)


PACKAGED: dict[str, Packaged] = {
    "gsm8k": Packaged("completion", _gsm8k_rows),
    "reasoning_gym": Packaged("completion", reasoning_gym.completion_rows, ("task", "config", "size", "seed"),
                              _check_reasoning_gym, reasoning_gym.DISTRIBUTION, reasoning_gym.prepare),
}


def data_versions(sources: Iterable[SourceSettings]) -> dict[str, str]:
    """``{distribution: installed version}`` for the packaged sources among ``sources`` that record one."""
    names = sorted({PACKAGED[source.package].distribution for source in sources
                    if source.package and PACKAGED[source.package].distribution})
    return {name: importlib.metadata.version(name) for name in names}
