"""What the study report reads: the cell records its plan names, found in the cell store (``None``: not run)."""

from __future__ import annotations

from dataclasses import dataclass, field

from radargate.experiment.cells import Cell, CellStore
from radargate.experiment.config import ExperimentConfig
from radargate.experiment.plan import BASE, headline_cells, learning_rate_cells, learning_rates, sweep_cells


@dataclass
class Gathered:
    """The cell records the report reads, found through the study's plan (``None``: not run yet)."""

    config: ExperimentConfig
    base: dict | None
    rates: dict[str, float | None] | None
    lr_search: dict[Cell, dict | None]
    provisional: bool = False
    """The rates are the best among finished search cells; rates beyond the grid's edge are still to run."""
    sweep: dict[str, dict[Cell, dict | None]] = field(default_factory=dict)
    headline: dict[Cell, dict | None] = field(default_factory=dict)

    def records(self) -> dict[str, dict]:
        """Every distinct finished cell by name (a cell two parts share counts once)."""
        found = {"base": self.base} if self.base else {}
        for group in (self.lr_search, self.headline, *self.sweep.values()):
            found.update({cell.name: record for cell, record in group.items() if record})
        return found

    def seeds_of(self, axis: str, method: str, n: int) -> list[dict]:
        return [record for cell, record in self.sweep[axis].items()
                if record and not record["failed"] and cell.method == method and cell.n == n]

    def sides(self, axis: str, method: str, n: int) -> list[dict]:
        """One side of a comparison: ``method``'s finished seeds at ``n``, or the base model's one cell."""
        if method == "base":
            return [self.base] if self.base and not self.base["failed"] else []
        return self.seeds_of(axis, method, n)


def gather(config: ExperimentConfig, store: CellStore) -> Gathered:
    """Every cell the study's plan names so far, read from ``store``; the sweep once the rates are known."""
    rates = learning_rates(config, store)
    provisional = rates is None
    if provisional:
        rates = learning_rates(config, store, provisional=True)
    found = Gathered(config, store.load(BASE, config), rates,
                     {cell: store.load(cell, config) for cell in learning_rate_cells(config, store)}, provisional)
    if rates is not None:
        found.sweep = {axis: {cell: store.load(cell, config) for cell in cells}
                       for axis, cells in sweep_cells(config, rates).items()}
        found.headline = {cell: store.load(cell, config) for cell in headline_cells(config, rates, store)}
    return found
