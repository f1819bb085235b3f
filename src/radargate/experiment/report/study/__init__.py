"""The study's report, built from the cell files alone: ``<report_dir>/<name>.md``, its plots, and
``<name>.json`` / ``<name>.csv`` with one row per cell.

It opens with the answer in plain words, then backs every word with a paired bootstrap interval
(``report.intervals``: per example, seeds pooled): each method against the softmax gate, top-k and the
base model at each ``n``, on the fit (answer NLL on training examples, eval mode), the test split and
the unseen tasks (accuracy and answer NLL); whether RadarGate's margin grows from the smallest to the
largest ``n``; and the paper's per-task fitting experiment. A missing cell leaves a "-" (or a note),
never a guess.

One module per section, in the report's order: ``answer`` (The answer), ``robustness`` (its own protocol),
``conditions`` (Setup; Time and hardware), ``learning_rates``, ``tables`` (every method against the references,
the margin's growth with n, the means per cell and their plots), ``headline`` (the paper's headline replayed),
``diagnostics`` (Why). They read the records ``gathered`` finds, state differences through ``differences`` and
means through ``rows``; :func:`write_study_report` puts the sections in order and writes the files.
"""

from __future__ import annotations

from pathlib import Path

from radargate.experiment.cells import CellStore, cells_directory
from radargate.experiment.config import ExperimentConfig
from radargate.experiment.report.study.answer import answer_section
from radargate.experiment.report.study.conditions import setup_section, timing_section
from radargate.experiment.report.study.diagnostics import diagnostics_section
from radargate.experiment.report.study.gathered import gather
from radargate.experiment.report.study.headline import headline_section
from radargate.experiment.report.study.learning_rates import learning_rate_section
from radargate.experiment.report.study.robustness import robustness_section
from radargate.experiment.report.study.rows import aggregate, cell_row, cells_csv
from radargate.experiment.report.study.tables import (
    differences_section,
    growth_section,
    plot_summary,
    summary_section,
)
from radargate.files import atomic_write_json, atomic_write_text

__all__ = ["write_study_report"]


def write_study_report(config: ExperimentConfig, store: CellStore) -> Path:
    """Write ``<report_dir>/<name>.md`` with its plots, ``.json`` and ``.csv`` from the cell files alone."""
    found = gather(config, store)
    report_dir = Path(config.study.report_dir)
    rows = [cell_row(record) for record in found.records().values()]
    summary = aggregate([row for row in rows if row["part"] == "sweep"], found)
    plots = plot_summary(summary, config, report_dir)
    sections = [
        _title(config),
        answer_section(found),
        robustness_section(found, store),
        setup_section(found),
        learning_rate_section(found),
        *(differences_section(found, axis) for axis in found.sweep),
        growth_section(found),
        summary_section(summary, plots),
        headline_section(found),
        diagnostics_section(summary),
        timing_section({row['name']: row for row in rows}),
    ]
    path = report_dir / f"{config.name}.md"
    atomic_write_text(path, "\n\n".join(section for section in sections if section) + "\n")
    atomic_write_json(report_dir / f"{config.name}.json", {"config": config.to_dict(), "cells": rows,
                                                             "summary": summary})
    atomic_write_text(report_dir / f"{config.name}.csv", cells_csv(rows))
    return path


def _title(config: ExperimentConfig) -> str:
    return (f"# radargate scaling study: {config.name}\n\n"
            f"Rebuilt from the cell files in `{cells_directory(config)}` "
            f"by `radargate study --config <this study's config> --report-only`; one row per cell in "
            f"`{config.name}.csv`. Differences are method minus reference, per example, seeds pooled, with 95% "
            "paired-bootstrap intervals (scipy); accuracy in points, answer NLL in nats per answer token "
            "(lower is better). \"better\"/\"worse\" only where the interval excludes zero, else \"no diff.\" "
            "(no detectable difference).")
