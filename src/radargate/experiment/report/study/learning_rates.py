"""The "Learning rates" section: every rate each method tried, the one chosen, and where a wider search might help."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from radargate.experiment.cells import Cell
from radargate.experiment.report.comparison import markdown_table
from radargate.experiment.report.format import validation_text
from radargate.experiment.report.study.gathered import Gathered


def learning_rate_section(found: Gathered) -> str:
    study = found.config.study
    if not study.lr_grid:
        return (f"## Learning rates\n\nOne rate for every method: {found.config.train.lr:g} (no `study.lr_grid`). "
                "A convex gate (softmax, top-k) hands each expert about 1/n of the update, so one shared rate "
                "may favour some n; this study does not correct for it.")
    searched = {(cell.method, cell.lr): record for cell, record in found.lr_search.items()}

    def chosen_text(method: str) -> str:
        chosen = (found.rates or {}).get(method)
        so_far = " so far" if any(record is None for (m, _), record in searched.items() if m == method) else ""
        return f"{chosen:g}{so_far}" if chosen else ("pending" if found.rates is None else "none")

    header, rows = rate_table(found.lr_search, chosen_text)
    edges = []
    for method in dict.fromkeys(cell.method for cell in found.lr_search):
        own = [lr for m, lr in searched if m == method]
        if (found.rates or {}).get(method) in (min(own), max(own)) and len(own) > 1:
            edges.append(method)
    rates = sorted({cell.lr for cell in found.lr_search})
    beyond = sorted(set(rates) - set(study.lr_grid))
    extended = (f" A method whose best rate lies at an end of the grid is also tried at the next rate out "
                f"({', '.join(f'{lr:g}' for lr in beyond)}; up to {study.lr_extend} beyond each end)."
                if beyond else "")
    edge_note = (f" The rate chosen for {', '.join(edges)} still lies at the edge of the rates searched, so a "
                 "wider search might find a better one for them." if edges else "")
    if found.provisional and found.rates:
        edge_note += (" **Provisional:** some rates beyond the grid's edge have not run yet; every comparison in "
                      "this report uses each method's best rate *so far*, and may change when they have.")
    return "\n".join([
        "## Learning rates", "",
        f"Each method tried every rate at n={study.lr_experts} (seed {study.seeds[0]}); the rate with the lowest "
        "validation answer NLL trains all of that method's cells. A convex gate (softmax, top-k) hands each expert "
        "about 1/n of the update, so its best rate may grow with n; choosing at one n fixes the rate there, and "
        "the margins at other n carry that confound (per-(method, n) rates were not searched)." + extended
        + edge_note, "",
        markdown_table(header, rows),
    ])


def rate_table(search: Mapping[Cell, dict | None], chosen: Callable[[str], str]) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a learning-rate search: per method, each rate's validation answer NLL / accuracy
    (``not tried`` where the method did not try it), then ``chosen(method)``."""
    rates = sorted({cell.lr for cell in search})
    searched = {(cell.method, cell.lr): record for cell, record in search.items()}
    rows = [[method, *(validation_text(searched[method, lr]) if (method, lr) in searched else "not tried"
                       for lr in rates), chosen(method)]
            for method in dict.fromkeys(cell.method for cell in search)]
    return ["method", *(f"lr {lr:g}: val NLL / acc %" for lr in rates), "chosen"], rows
