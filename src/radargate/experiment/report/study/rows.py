"""One row per cell (the CSV, the JSON) and their means over seeds (the tables), with how a mean reads."""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from radargate.experiment.cells import Cell
from radargate.experiment.evaluate import mean
from radargate.experiment.report.study.gathered import Gathered

ROW_METRICS = ("final_train_loss", "validation_answer_nll", "fit_answer_nll", "test_acc", "test_answer_nll",
               "unseen_acc", "unseen_answer_nll", "routing_entropy", "busiest_expert_share", "mean_abs_angle",
               "contrast_rho", "mean_grad_norm", "wall_s")


def cell_row(record: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one cell file that tables and the CSV show."""
    cell, metrics = record["cell"], record["metrics"]
    routing = record.get("routing") or {}
    grad_norms = [g for g in record.get("training", {}).get("grad_norm", []) if g is not None]
    validation = metrics.get("validation") or [{}]
    return {
        "name": cell["name"], "part": _part(cell), "method": cell["method"], "n": cell["n"], "r": cell["r"],
        "seed": cell["seed"], "lr": cell["lr"], "task": cell["task"], "failed": record["failed"],
        "final_train_loss": metrics.get("final_train_loss"),
        "validation_answer_nll": validation[-1].get("macro_answer_nll"),
        **{f"{split}_{metric}": (metrics.get(split) or {}).get(f"macro_{metric}")
           for split in ("fit", "test", "unseen") for metric in ("acc", "answer_nll")},
        "routing_entropy": mean(layer.get("mean_entropy") for layer in routing.values()),
        "busiest_expert_share": mean(max(layer["top_choice_share"]) for layer in routing.values()
                                     if layer.get("top_choice_share")),
        "mean_abs_angle": mean(layer.get("theta_abs_mean") for layer in routing.values()),
        "contrast_rho": mean((layer.get("contrast") or {}).get("spearman_cos_before_vs_change")
                             for layer in routing.values()),
        "mean_grad_norm": mean(grad_norms),
        "trainable_params": metrics.get("trainable_params"),
        "wall_s": _sum_present(record["timings"].get(key) for key in ("train_and_test_s", "unseen_s")),
        "train_s": record["timings"].get("train_s"),
        "hardware": record.get("hardware"),
    }


def _part(cell: dict[str, Any]) -> str:
    return "base" if cell["method"] == "base" else ("headline" if cell["task"] else "sweep")


def aggregate(rows: list[dict[str, Any]], found: Gathered) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, per (axis, method, n); failed cells are counted, not averaged."""
    by_name = {row["name"]: row for row in rows}
    summary = []
    for axis, cells in found.sweep.items():
        groups: dict[tuple[str, int], list[Cell]] = defaultdict(list)
        for cell in cells:
            groups[(cell.method, cell.n)].append(cell)
        for (method, n), members in groups.items():
            present = [by_name[c.name] for c in members if c.name in by_name]
            entry: dict[str, Any] = {"axis": axis, "method": method, "n": n, "r": members[0].r,
                                     "lr": members[0].lr, "seeds": len(present), "planned": len(members),
                                     "failed": sum(bool(row["failed"]) for row in present)}
            for metric in ROW_METRICS:
                values = [row[metric] for row in present if row.get(metric) is not None]
                entry[metric] = mean(values)
                entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
            summary.append(entry)
    return summary


def plus_minus(entry: dict, metric: str, scale: float, spec: str) -> str:
    mean, std = entry.get(metric), entry.get(f"{metric}_std")
    if mean is None:
        return "-"
    text = format(scale * mean, spec)
    return f"{text} ± {format(scale * std, spec.lstrip('+'))}" if std is not None else text


def _sum_present(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) if present else None


def cells_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(key for row in rows for key in row)) or ["name"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
