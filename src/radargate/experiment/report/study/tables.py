"""The sweep's tables: every method against softmax, top-k and the base model; whether RadarGate's margin grows
with n; the means per cell (± std over seeds) and their plots."""

from __future__ import annotations

from pathlib import Path

from radargate.experiment.config import ExperimentConfig
from radargate.experiment.report.comparison import markdown_table
from radargate.experiment.report.plots import plot_metric_against_experts
from radargate.experiment.report.study.differences import CLAIMS, REFERENCES, describe, difference, growth_lines
from radargate.experiment.report.study.gathered import Gathered
from radargate.experiment.report.study.rows import plus_minus


def differences_section(found: Gathered, axis: str) -> str:
    experts = sorted({cell.n for cell in found.sweep[axis]})
    methods = [m for m in found.config.study.methods if m != "base"]
    header = ["n", "comparison", *(label for label, _, _ in CLAIMS)]
    rows = []
    for n in experts:
        for reference in REFERENCES:
            for method in methods:
                if method == reference:
                    continue
                a, b = found.sides(axis, method, n), found.sides(axis, reference, n)
                if a and b:
                    rows.append([str(n), f"{method} - {reference}",
                                 *(describe(difference(a, b, split, metric), short=True)
                                   for _, split, metric in CLAIMS)])
    title = f"## Every method against softmax, top-k and the base model ({axis})"
    return f"{title}\n\n" + (markdown_table(header, rows) if rows else "No finished pairs yet.")


def growth_section(found: Gathered) -> str:
    lines = []
    for axis in found.sweep:
        growth = growth_lines(found, axis, *((split, metric) for _, split, metric in CLAIMS))
        lines += [f"**{axis}**", "", *(growth or ["- not enough n yet"]), ""]
    note = ("(margin at the largest n minus margin at the smallest; for NLL negative, for accuracy positive, means "
            "RadarGate pulls ahead)")
    body = "\n".join(lines).rstrip() or "Not measured yet: the sweep has not started."
    return "\n\n".join(["## Does RadarGate's margin grow with n?", note, body])


def summary_section(summary: list[dict], plots: list[Path]) -> str:
    header = ["axis", "method", "n", "r", "lr", "seeds", "train loss", "val NLL", "fit NLL", "test acc %", "test NLL",
              "unseen acc %", "unseen NLL", "wall s"]
    rows = [[e["axis"], e["method"], str(e["n"]), str(e["r"]), f"{e['lr']:g}", _seeds(e),
             plus_minus(e, "final_train_loss", 1, ".3f"), plus_minus(e, "validation_answer_nll", 1, ".3f"),
             plus_minus(e, "fit_answer_nll", 1, ".3f"), plus_minus(e, "test_acc", 100, ".1f"),
             plus_minus(e, "test_answer_nll", 1, ".3f"), plus_minus(e, "unseen_acc", 100, ".1f"),
             plus_minus(e, "unseen_answer_nll", 1, ".3f"), plus_minus(e, "wall_s", 1, ".0f")]
            for e in summary]
    figures = [f"![{path.stem}]({path})" for path in plots]
    return "\n\n".join(["## Means per cell (± std over seeds)", markdown_table(header, rows), *figures])


def _seeds(entry: dict) -> str:
    text = f"{entry['seeds']}/{entry['planned']}"
    return f"{text} ({entry['failed']} failed)" if entry["failed"] else text


def plot_summary(summary: list[dict], config: ExperimentConfig, report_dir: Path) -> list[Path]:
    paths = []
    for axis in config.study.axes:
        entries = [e for e in summary if e["axis"] == axis]
        for metric in ("fit_answer_nll", "test_answer_nll", "test_acc", "unseen_answer_nll"):
            path = report_dir / f"{config.name}_plots" / f"{axis}_{metric}.png"
            plot_metric_against_experts(entries, metric, path)
            paths.append(path.relative_to(report_dir))
    return paths
