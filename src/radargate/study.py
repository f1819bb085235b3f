"""The scaling study: does RadarGate keep improving as the number of experts grows?

``radargate study --config configs/study.yaml`` trains every cell (axis x method x experts x seed)
with ``run_method`` in ``<output_dir>/<name>/<method>-n<n>-r<r>-s<seed>/``, evaluates it on the
test split and zero-shot on BIG-bench tasks outside training (``unseen.json``), and writes
``<report_dir>/<name>.md`` with ``<name>.json`` / ``<name>.csv`` beside it. Finished cells are never
run again, so an interrupted sweep resumes and a rerun only rebuilds the report.

Axes: ``fixed_r`` keeps each expert's rank (the mixture grows with ``n``); ``fixed_total_rank``
sets ``r = total_rank / n`` (the same parameter budget at every ``n``; ``n`` that do not divide it
are skipped). ``lora`` is PEFT's LoRA at rank ``n * r``, the same trainable width. A cell that both
axes contain (``r == total_rank / n``) is trained once: its directory names the settings, not the axis.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radargate.analysis import summarize_contrast
from radargate.compare import hardware_description, run_or_record_failure
from radargate.data.bigbench import load_suite
from radargate.evaluate import evaluate_multiple_choice
from radargate.experiment import ExperimentConfig
from radargate.files import atomic_write_json, atomic_write_text
from radargate.plots import plot_metric_against_experts
from radargate.report import markdown_table, routing_section
from radargate.train import autocast_dtype, load_splits, load_trained

IDENTITY = ("axis", "method", "n", "seed", "failed")
"""The keys of a cell row that name it (or mark it failed); every other key is a number averaged over seeds."""


@dataclass(frozen=True)
class Cell:
    axis: str
    method: str
    n: int
    r: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-n{self.n}-r{self.r}-s{self.seed}"

    def config(self, base: ExperimentConfig) -> ExperimentConfig:
        adapter = dataclasses.replace(base.adapter, num_experts=self.n, r=self.r)
        train = dataclasses.replace(base.train, seed=self.seed)
        return dataclasses.replace(base, adapter=adapter, train=train).for_method(self.method)


def cells(config: ExperimentConfig) -> list[Cell]:
    study = config.study
    return [
        Cell(axis, method, n, study.total_rank // n if axis == "fixed_total_rank" else config.adapter.r, seed)
        for axis in study.axes
        for n in study.experts
        if axis == "fixed_r" or study.total_rank % n == 0
        for method in study.methods
        for seed in study.seeds
    ]


def run_cell(config: ExperimentConfig, cell: Cell, splits: dict[str, list]) -> dict[str, Any]:
    """Train and test one cell (or read it back), then its zero-shot accuracy on unseen tasks."""
    return _run_with_unseen(cell.config(config), config.run_dir / cell.name, splits)


def run_base(config: ExperimentConfig, splits: dict[str, list]) -> dict[str, Any]:
    """The untrained base model on the same test split and unseen tasks: the point of reference
    that shows what training did, on the suite and off it."""
    return _run_with_unseen(config.for_method("base"), config.run_dir / "base", splits)


def _run_with_unseen(config: ExperimentConfig, directory: Path, splits: dict[str, list]) -> dict[str, Any]:
    result = run_or_record_failure(config, directory, show_progress=False, splits=splits)
    if result.get("failed"):
        return result
    unseen_path = directory / "unseen.json"
    if not unseen_path.is_file():
        atomic_write_json(unseen_path, evaluate_unseen(config, directory))
    result["unseen"] = json.loads(unseen_path.read_text())
    return result


def evaluate_unseen(config: ExperimentConfig, directory: Path) -> dict[str, Any]:
    model, tokenizer, _ = load_trained(directory)
    study = config.study
    examples = load_suite(study.unseen_tasks, seed=config.data.split_seed,
                          max_per_split={"test": study.max_unseen_per_task})["test"]
    return evaluate_multiple_choice(
        model, tokenizer, examples, batch_size=config.eval.batch_size, max_length=config.data.max_length,
        autocast_dtype=autocast_dtype(config.train.precision),
    )


def cell_row(cell: Cell, result: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one cell that the report aggregates, straight from its results."""
    if result.get("failed"):
        return {"axis": cell.axis, "method": cell.method, "n": cell.n, "seed": cell.seed, "failed": True}
    validation = result.get("validation") or [{}]
    routing = result.get("routing") or {}
    contrast = summarize_contrast(routing) if any("contrast" in layer for layer in routing.values()) else {}
    return {
        "axis": cell.axis, "method": cell.method, "n": cell.n, "seed": cell.seed, "failed": False,
        "final_train_loss": result.get("final_train_loss"),
        "val_acc": validation[-1].get("macro_acc"),
        "test_acc": result["test"]["macro_acc"],
        "unseen_acc": result["unseen"]["macro_acc"],
        "trainable_params": result.get("trainable_params"),
        "train_time_s": result.get("train_time_s"),
        "wall_time_s": result.get("wall_time_s"),
        "mean_rho": contrast.get("mean_rho"),
        "mean_rho_shuffled": contrast.get("mean_rho_shuffled_theta_baseline"),
        "routing_entropy": _mean(layer.get("mean_entropy") for layer in routing.values()),
        **_unseen_per_task(result),
    }


def _unseen_per_task(result: dict[str, Any]) -> dict[str, float]:
    return {f"unseen_{task}": scores["acc"] for task, scores in sorted(result["unseen"]["per_task"].items())}


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, per (axis, method, n); failed cells are counted, not averaged."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["axis"], row["method"], row["n"])].append(row)
    summary = []
    for (axis, method, n), members in sorted(groups.items()):
        entry: dict[str, Any] = {"axis": axis, "method": method, "n": n, "seeds": len(members),
                                 "failed": sum(bool(m.get("failed")) for m in members)}
        metrics = dict.fromkeys(key for m in members for key in m if key not in IDENTITY)
        for metric in metrics:
            values = [m[metric] for m in members if m.get(metric) is not None]
            entry[metric] = _mean(values)
            entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
        summary.append(entry)
    return summary


LOWER_IS_BETTER = {"final_train_loss"}


def verdicts(summary: list[dict[str, Any]], metric: str) -> list[str]:
    """Per (axis, n): RadarGate against the best other method; a tie when the gap is within a seed std,
    and no verdict at all from a single seed. Accuracies are compared as percentages, higher better;
    the training loss (how well each method fits) lower better."""
    lower = metric in LOWER_IS_BETTER
    scale, spec, unit, points = (1, ".3f", "", "") if lower else (100, ".1f", "%", " points")
    lines = []
    by_case: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for entry in summary:
        by_case[(entry["axis"], entry["n"])][entry["method"]] = entry
    for (axis, n), methods in sorted(by_case.items()):
        radar = methods.get("radar")
        others = {m: e for m, e in methods.items() if m != "radar" and e.get(metric) is not None}
        if radar is None or radar.get(metric) is None or not others:
            continue
        pick = min if lower else max
        best_name, best = pick(others.items(), key=lambda item: item[1][metric])
        gap = radar[metric] - best[metric]
        stds = [e[f"{metric}_std"] for e in (radar, best) if e[f"{metric}_std"] is not None]
        numbers = (f"{scale * radar[metric]:{spec}}{unit} vs {scale * best[metric]:{spec}}{unit}, "
                   f"gap {scale * gap:+{spec}}{points}")
        if not stds:
            lines.append(f"- {axis}, n={n}: radar vs {best_name} on {metric.replace('_', ' ')}: {numbers} "
                         "(one seed: no spread to judge, no verdict)")
            continue
        spread = max(stds)
        better = gap < 0 if lower else gap > 0
        word = "ties with" if abs(gap) <= spread else ("wins over" if better else "loses to")
        lines.append(
            f"- {axis}, n={n}: radar {word} {best_name} on {metric.replace('_', ' ')} "
            f"({numbers}, seed std up to {scale * spread:{spec}})"
        )
    return lines


def study(config: ExperimentConfig) -> Path:
    """Run (or read back) every cell, then write the report and the raw results."""
    started = time.perf_counter()
    splits = load_splits(config)  # cells differ in method, experts and seed, never in data
    base = base_row(run_base(config, splits))
    results = {cell: run_cell(config, cell, splits) for cell in cells(config)}
    rows = [cell_row(cell, result) for cell, result in results.items()]
    summary = aggregate(rows)
    report_dir = Path(config.study.report_dir)
    name = config.name
    raw = {"config": config.to_dict(), "hardware": hardware_description(), "base": base, "cells": rows,
           "summary": summary, "wall_time_s_this_invocation": time.perf_counter() - started}
    atomic_write_json(report_dir / f"{name}.json", raw)
    atomic_write_text(report_dir / f"{name}.csv", _csv(rows))
    return write_study_report(config, summary, results, base, report_dir)


def base_row(result: dict[str, Any]) -> dict[str, Any]:
    """The base model's accuracies, keyed as the summary's entries are (one run: no spread)."""
    return {"axis": "-", "method": "base", "n": "-", "test_acc": result["test"]["macro_acc"],
            "unseen_acc": result["unseen"]["macro_acc"],
            **_unseen_per_task(result)}


def write_study_report(config: ExperimentConfig, summary: list[dict], results: dict[Cell, dict],
                       base: dict[str, Any], report_dir: Path) -> Path:
    name = config.name
    plots_dir = f"{name}_plots"
    distinct = {cell.name: result for cell, result in results.items()}  # a shared cell ran once
    plots = {}
    for axis in config.study.axes:
        for metric in ("test_acc", "unseen_acc", "final_train_loss"):
            path = report_dir / plots_dir / f"{axis}_{metric}.png"
            plot_metric_against_experts([e for e in summary if e["axis"] == axis], metric, path)
            plots[(axis, metric)] = path.relative_to(report_dir)
    train_time = sum(result.get("train_time_s") or 0.0 for result in distinct.values())
    wall_time = sum(result.get("wall_time_s") or 0.0 for result in distinct.values())
    lines = [
        f"# radargate scaling study: {name}",
        "",
        f"Generated by `radargate study` from `{name}.json` (raw per-cell numbers also in `{name}.csv`).",
        "",
        f"- **Hardware:** {hardware_description()}",
        f"- **Model:** {config.model.name}; **training tasks:** {', '.join(config.data.tasks)}",
        f"- **Steps:** {config.train.steps} x batch {config.train.batch_size}; **seeds:** {config.study.seeds}; "
        f"**experts:** {config.study.experts}; **axes:** {', '.join(config.study.axes)}"
        + (f" (total rank {config.study.total_rank})" if "fixed_total_rank" in config.study.axes else ""),
        f"- **Unseen tasks (zero-shot):** {', '.join(config.study.unseen_tasks)}",
        f"- **Wall time over the {len(distinct)} trained cells:** {wall_time:.0f} s "
        f"(of which training {train_time:.0f} s; test-split evaluation included, unseen-task evaluation not; "
        "each cell's time as measured when it ran)",
        "",
        "## Where RadarGate wins, ties or loses",
        "",
        *verdicts(summary, "test_acc"),
        *verdicts(summary, "unseen_acc"),
        *verdicts(summary, "final_train_loss"),
        "",
        "## Results (mean ± std over seeds)",
        "",
        f"The untrained base model scores {100 * base['test_acc']:.1f}% on the same test split and "
        f"{100 * base['unseen_acc']:.1f}% on the unseen tasks.",
        "",
        _summary_table(summary),
        "",
    ]
    for (axis, metric), path in plots.items():
        lines += [f"![{metric} against n, {axis}]({path})", ""]
    lines += ["## Unseen tasks, zero-shot accuracy per task (%, mean ± std over seeds)", "",
              _unseen_table([base, *summary], config.study.unseen_tasks), ""]
    lines += ["## Contrastive analysis (RadarGate cells)", "", _contrast_table(summary), ""]
    lines += [line for cell in _routing_examples(results)
              for line in (routing_section(cell.name, results[cell]["routing"], report_dir, plots_dir), "")]
    path = report_dir / f"{name}.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _routing_examples(results: dict[Cell, dict]) -> list[Cell]:
    """The cells whose routing the report shows: every routed method at the largest ``n`` of each axis,
    first seed; a cell both axes share is shown once."""
    largest = {axis: max(cell.n for cell in results if cell.axis == axis) for axis in {c.axis for c in results}}
    first_seed = min(cell.seed for cell in results)
    chosen = {cell.name: cell for cell in results
              if cell.n == largest[cell.axis] and cell.seed == first_seed and results[cell].get("routing")}
    return list(chosen.values())


def _summary_table(summary: list[dict]) -> str:
    header = ["axis", "method", "n", "seeds", "train loss", "val acc %", "test acc %", "unseen acc %",
              "routing entropy", "trainable params", "train s"]
    rows = [
        [e["axis"], e["method"], str(e["n"]), _seeds(e), _pm(e, "final_train_loss", 1, ".3f"),
         _pm(e, "val_acc", 100, ".1f"), _pm(e, "test_acc", 100, ".1f"), _pm(e, "unseen_acc", 100, ".1f"),
         _pm(e, "routing_entropy", 1, ".3f"),
         f"{e['trainable_params']:,.0f}" if e.get("trainable_params") is not None else "-",
         _pm(e, "train_time_s", 1, ".0f")]
        for e in summary
    ]
    return markdown_table(header, rows)


def _seeds(entry: dict) -> str:
    return f"{entry['seeds']} ({entry['failed']} failed)" if entry["failed"] else str(entry["seeds"])


def _unseen_table(summary: list[dict], tasks: list[str]) -> str:
    header = ["axis", "method", "n", *tasks, "macro"]
    rows = [[e["axis"], e["method"], str(e["n"]), *(_pm(e, f"unseen_{task}", 100, ".1f") for task in tasks),
             _pm(e, "unseen_acc", 100, ".1f")] for e in summary]
    return markdown_table(header, rows)


def _contrast_table(summary: list[dict]) -> str:
    rows = [[e["axis"], str(e["n"]), _pm(e, "mean_rho", 1, "+.3f"), _pm(e, "mean_rho_shuffled", 1, "+.3f")]
            for e in summary if e.get("mean_rho") is not None]
    if not rows:
        return "No RadarGate cells with routing data."
    header = ["axis", "n", "mean Spearman rho (cos before vs change)", "shuffled-angle baseline"]
    return markdown_table(header, rows)


def _pm(entry: dict, metric: str, scale: float, spec: str) -> str:
    mean, std = entry.get(metric), entry.get(f"{metric}_std")
    if mean is None:
        return "-"
    text = format(scale * mean, spec)
    return f"{text} ± {format(scale * std, spec.lstrip('+'))}" if std is not None else text


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(key for row in rows for key in row)) or ["axis"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
