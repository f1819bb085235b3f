"""The study's report, built from the cell files alone: ``<report_dir>/<name>.md``, its plots, and
``<name>.json`` / ``<name>.csv`` with one row per cell.

It opens with the answer in plain words, then backs every word with a paired bootstrap interval
(``report.intervals``: per example, seeds pooled): each method against the softmax gate, top-k and the
base model at each ``n``, on the fit (answer NLL on training examples, eval mode), the test split and
the unseen tasks (accuracy and answer NLL); whether RadarGate's margin grows from the smallest to the
largest ``n``; and the paper's per-task fitting experiment. A missing cell leaves a "-" (or a note),
never a guess.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radargate.experiment.cells import Cell, CellStore, cells_directory, evaluation
from radargate.experiment.evaluate import mean
from radargate.experiment.plan import BASE, headline_cells, learning_rate_cells, learning_rates, sweep_cells
from radargate.experiment.report.comparison import markdown_table
from radargate.experiment.report.format import number, signed_difference, validation_text
from radargate.experiment.report.intervals import Difference, paired_contrast
from radargate.experiment.report.plots import plot_metric_against_experts
from radargate.experiment.report.robustness import robustness_section
from radargate.files import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from radargate.experiment.config import ExperimentConfig

REFERENCES = ("softmax", "topk", "base")
CLAIMS = (  # (label, split, metric): the paper's three claims, each measured on its own
    ("fit NLL", "fit", "answer_nll"),
    ("test NLL", "test", "answer_nll"),
    ("test acc", "test", "acc"),
    ("unseen NLL", "unseen", "answer_nll"),
    ("unseen acc", "unseen", "acc"),
)
ROW_METRICS = ("final_train_loss", "validation_answer_nll", "fit_answer_nll", "test_acc", "test_answer_nll",
               "unseen_acc", "unseen_answer_nll", "routing_entropy", "busiest_expert_share", "mean_abs_angle",
               "contrast_rho", "mean_grad_norm", "wall_s")
VERDICT_SHORT = {"better": "better", "worse": "worse", "no detectable difference": "no diff."}


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


def gather(config: ExperimentConfig, store: CellStore) -> Gathered:
    rates = learning_rates(config, store)
    provisional = rates is None
    if provisional:
        rates = learning_rates(config, store, provisional=True)
    found = Gathered(config, store.load(BASE, config), rates,
                     {cell: store.load(cell, config) for cell in learning_rate_cells(config, store)}, provisional)
    if rates is not None:
        found.sweep = {axis: {cell: store.load(cell, config) for cell in cells}
                       for axis, cells in sweep_cells(config, rates).items()}
        found.headline = {cell: store.load(cell, config) for cell in headline_cells(config, rates)}
    return found


def write_study_report(config: ExperimentConfig, store: CellStore) -> Path:
    found = gather(config, store)
    report_dir = Path(config.study.report_dir)
    rows = [cell_row(record) for record in found.records().values()]
    summary = aggregate([row for row in rows if row["part"] == "sweep"], found)
    plots = _plots(summary, config, report_dir)
    sections = [
        _title(config),
        _answer_section(found),
        _robustness_section(found, store),
        _setup_section(found),
        _learning_rate_section(found),
        *(_differences_section(found, axis) for axis in found.sweep),
        _growth_section(found),
        _summary_section(summary, plots),
        _headline_section(found),
        _diagnostics_section(summary),
        _timing_section({row['name']: row for row in rows}),
    ]
    path = report_dir / f"{config.name}.md"
    atomic_write_text(path, "\n\n".join(section for section in sections if section) + "\n")
    atomic_write_json(report_dir / f"{config.name}.json", {"config": config.to_dict(), "cells": rows,
                                                             "summary": summary})
    atomic_write_text(report_dir / f"{config.name}.csv", cells_csv(rows))
    return path


def _robustness_section(found: Gathered, store: CellStore) -> str:
    if found.config.study.robustness is None or found.rates is None or found.provisional:
        return ""
    softmax = {n: found.seeds_of("fixed_r", "softmax", n) for n in found.config.study.robustness.experts
               if "fixed_r" in found.sweep}
    return robustness_section(found.config, store, softmax)


# -- per-cell rows and their means over seeds ----------------------------------------------------------------


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


# -- intervals -----------------------------------------------------------------------------------------------


def difference(a: Sequence[dict], b: Sequence[dict], split: str, metric: str) -> Difference | None:
    """``a`` minus ``b`` (cell records, seeds pooled per example), or ``None`` if either side lacks the split."""
    return contrast([(1.0, a), (-1.0, b)], split, metric)


def contrast(terms: Sequence[tuple[float, Sequence[dict]]], split: str, metric: str) -> Difference | None:
    evaluations = [(weight, [evaluation(r, split) for r in records]) for weight, records in terms]
    if any(not found or any(e is None for e in found) for _, found in evaluations):
        return None
    return paired_contrast(evaluations, metric)


def describe(found: Difference | None, *, short: bool = False) -> str:
    """``-0.052 [-0.071, -0.034] better``: accuracy in points, NLL in nats per answer token."""
    if found is None:
        return "-"
    verdict = VERDICT_SHORT[found.verdict] if short else found.verdict
    return (f"{signed_difference(found.metric, found.mean)} [{signed_difference(found.metric, found.low)}, "
            f"{signed_difference(found.metric, found.high)}] {verdict}")


def _sides(found: Gathered, axis: str, method: str, n: int) -> list[dict]:
    if method == "base":
        return [found.base] if found.base and not found.base["failed"] else []
    return found.seeds_of(axis, method, n)


# -- sections ------------------------------------------------------------------------------------------------


def _title(config: ExperimentConfig) -> str:
    return (f"# radargate scaling study: {config.name}\n\n"
            f"Rebuilt from the cell files in `{cells_directory(config)}` "
            f"by `radargate study --config <this study's config> --report-only`; one row per cell in "
            f"`{config.name}.csv`. Differences are method minus reference, per example, seeds pooled, with 95% "
            "paired-bootstrap intervals (scipy); accuracy in points, answer NLL in nats per answer token "
            "(lower is better). \"better\"/\"worse\" only where the interval excludes zero, else \"no diff.\" "
            "(no detectable difference).")


def _answer_section(found: Gathered) -> str:
    axis = "fixed_r" if "fixed_r" in found.sweep else next(iter(found.sweep), None)
    if axis is None:
        return "## The answer\n\nNo sweep cells yet (the learning-rate search has not finished)."
    large = sorted(n for n in found.config.study.experts if n >= 8) or sorted(found.config.study.experts)[-1:]
    lines = ["## The answer", "",
             f"RadarGate against the weighted-sum gates at n >= 8 (axis {axis}, each expert rank "
             f"{found.config.adapter.r}):", ""]
    tally: dict[str, int] = defaultdict(int)
    by_reference: dict[str, dict[str, int]] = {"softmax": defaultdict(int), "topk": defaultdict(int)}
    split_by_seed = []
    for label, split, metric in CLAIMS:
        parts = []
        for n in large:
            for reference in ("softmax", "topk"):
                result = difference(_sides(found, axis, "radar", n), _sides(found, axis, reference, n), split, metric)
                if result is not None:
                    tally[result.verdict] += 1
                    by_reference[reference][result.verdict] += 1
                    parts.append(f"n={n} vs {reference} {describe(result)}")
                    if result.verdict != "no detectable difference":
                        split_by_seed += _seed_disagreement(found, axis, reference, n, (label, split, metric))
        lines.append(f"- **{label}**: " + ("; ".join(parts) if parts else "not measured yet") + ".")
    total = sum(tally.values())
    if total:
        lines += ["", f"Of these {total} comparisons RadarGate is better in {tally['better']}, worse in "
                      f"{tally['worse']}, and not detectably different in {tally['no detectable difference']}. "
                      f"{_plainly(tally, by_reference)} By gate: "
                      + "; ".join(f"against {reference} better in {counts['better']}, worse in {counts['worse']}"
                                  for reference, counts in by_reference.items() if counts) + "."]
    if split_by_seed:
        lines += ["", "The intervals resample examples, not training runs. These verdicts are not shared by the seeds: "
                      "seed against seed, the difference changes sign, so the verdict rests on the seed as much as "
                      "on the gate: "
                      + "; ".join(split_by_seed) + "."]
    lines += ["", _completeness(found, axis)]
    for extra in (_learning_rate_check(found, axis), _rotation_line(found, axis)):
        if extra:
            lines += ["", extra]
    growth = _growth_lines(found, axis, ("fit", "answer_nll"), ("test", "answer_nll"), ("unseen", "answer_nll"))
    if growth:
        lines += ["", "Does its margin over each gate grow with n (margin at the largest n minus margin at the "
                      "smallest, answer NLL; negative = RadarGate pulls ahead)?", "", *growth]
    headline = _headline_counts(found)
    if headline:
        lines += ["", headline]
    return "\n".join(lines)


def _seed_disagreement(found: Gathered, axis: str, reference: str, n: int, claim: tuple[str, str, str]) -> list[str]:
    """``["unseen NLL n=8 vs topk (seed 0 -0.042, seed 1 +0.268)"]`` when RadarGate's mean difference from
    ``reference``, seed against same seed, has both signs; else nothing."""
    label, split, metric = claim
    radar, other = ({record["cell"]["seed"]: record for record in found.seeds_of(axis, method, n)}
                    for method in ("radar", reference))
    by_seed = {seed: difference([radar[seed]], [other[seed]], split, metric) for seed in radar.keys() & other.keys()}
    by_seed = {seed: result for seed, result in by_seed.items() if result is not None}
    if {d.mean > 0 for d in by_seed.values()} != {True, False}:
        return []
    seeds = ", ".join(f"seed {seed} {signed_difference(metric, d.mean)}" for seed, d in sorted(by_seed.items()))
    return [f"{label} n={n} vs {reference} ({seeds})"]


def _learning_rate_check(found: Gathered, axis: str) -> str:
    """Where top-k keeps every expert (k >= n) it is the softmax gate itself; if the two were trained at
    different rates, their difference there is what the learning rate alone does to the softmax gate."""
    k, rates = found.config.adapter.top_k, found.rates or {}
    if rates.get("topk") is None or rates.get("softmax") is None or rates["topk"] == rates["softmax"]:
        return ""
    for n in sorted({cell.n for cell in found.sweep.get(axis, {}) if cell.n <= k}):
        softmax = _sides(found, axis, "softmax", n)
        same_gate = difference(_sides(found, axis, "topk", n), softmax, "test", "answer_nll")
        radar = difference(_sides(found, axis, "radar", n), softmax, "test", "answer_nll")
        if same_gate is not None and radar is not None:
            return (f"A check on the softmax gate's learning rate: at n={n} top-k keeps all {k} experts, so it is "
                    f"the softmax gate itself, trained at top-k's rate ({rates['topk']:g}) instead of the softmax "
                    f"gate's ({rates['softmax']:g}). The rate alone moves test answer NLL by {describe(same_gate)}, "
                    f"against {describe(radar)} for RadarGate minus the softmax gate at the same n. A margin of "
                    "that size over the softmax gate can come from its learning rate; top-k, at the same rate as "
                    "RadarGate, is the comparison that holds the rate fixed.")
    return ""


def _rotation_line(found: Gathered, axis: str) -> str:
    """How RadarGate's learned rotations behave, beside the paper's finding that they are contrastive."""
    parts = []
    for n in sorted({cell.n for cell in found.sweep.get(axis, {})}):
        rows = [cell_row(record) for record in found.seeds_of(axis, "radar", n)]
        rho = mean(row["contrast_rho"] for row in rows)
        if rho is not None:
            angle = mean(row["mean_abs_angle"] for row in rows)
            parts.append(f"n={n}: mean |angle| {angle:.2f} rad, rho {rho:+.2f}")
    if not parts:
        return ""
    return ("How RadarGate rotates (the paper finds its rotations contrastive: an expert already close to its "
            "partner is turned closer, a distant one away, which is rho > 0 for the rank correlation between the "
            "cosine before rotation and the change; see Why): " + "; ".join(parts) + ".")


def _plainly(tally: dict[str, int], by_reference: dict[str, dict[str, int]]) -> str:
    """The plain answer: RadarGate must beat *each* weighted-sum gate, so one gate it does not lead is a no."""
    better, worse = tally["better"], tally["worse"]
    if better and not worse and better == sum(tally.values()):
        return "Yes: RadarGate beats both weighted-sum gates on every claim measured."
    if not better and not worse:
        return "No: RadarGate shows no detectable advantage over the weighted-sum gates."
    not_led = [reference for reference, counts in by_reference.items()
               if counts and counts["better"] <= counts["worse"]]
    if not not_led:
        return "A mixed answer, leaning to RadarGate."
    return (f"No: against {' and '.join(not_led)} RadarGate is as often or more often worse than better "
            "where the gates differ.")


def _completeness(found: Gathered, axis: str) -> str:
    """How much of the sweep the answer rests on, so a partial study is read as one."""
    cells = found.sweep.get(axis, {})
    done = sum(record is not None for record in cells.values())
    seeds = sorted({cell.seed for cell, record in cells.items() if record is not None})
    missing = sorted({cell.n for cell, record in cells.items() if record is None})
    text = f"This rests on {done} of the {len(cells)} planned sweep cells (seeds run: {seeds or 'none'})."
    if missing:
        text += (f" Cells at n = {', '.join(map(str, missing))} are still to run, so the answer and its growth with "
                 "n rest on the finished cells alone; rerun the study command to add them.")
    if found.provisional:
        text += (" The learning rates are provisional (rates beyond the grid's edge are still to run; see "
                 "Learning rates).")
    return text


def _growth_lines(found: Gathered, axis: str, *claims: tuple[str, str]) -> list[str]:
    """RadarGate's margin over each gate at the largest n minus at the smallest, among the n where both have
    finished cells (a study under way compares the n it has)."""
    experts = sorted({cell.n for cell in found.sweep.get(axis, {})})
    lines = []
    for reference in ("softmax", "topk"):
        finished = [n for n in experts if _sides(found, axis, "radar", n) and _sides(found, axis, reference, n)]
        if len(finished) < 2:
            continue
        low, high = finished[0], finished[-1]
        for split, metric in claims:
            terms = [(1.0, _sides(found, axis, "radar", high)), (-1.0, _sides(found, axis, reference, high)),
                     (-1.0, _sides(found, axis, "radar", low)), (1.0, _sides(found, axis, reference, low))]
            result = contrast(terms, split, metric)
            if result is not None:
                lines.append(f"- vs {reference}, {split} {metric.replace('_', ' ')}, n={high} vs n={low}: "
                             f"{describe(result)}")
    return lines


def _setup_section(found: Gathered) -> str:
    config = found.config
    records = found.records()
    hardware = sorted({r["hardware"] for r in records.values() if r.get("hardware")})
    test_counts = _examples_per_task(found.base, "test")
    unseen_counts = _examples_per_task(found.base, "unseen")
    study, train, data = config.study, config.train, config.data
    return "\n".join([
        "## Setup", "",
        f"- **Hardware:** {'; '.join(hardware) or '-'}",
        f"- **Model:** {config.model.name}; adapters on {', '.join(config.adapter.target_modules)}, "
        f"expert rank r={config.adapter.r} (alpha {config.adapter.alpha}), load-balance weight "
        f"{config.adapter.load_balance_weight}",
        f"- **Budget:** {train.steps} steps x batch {train.batch_size} x up to {data.max_length} tokens, "
        f"{train.warmup_steps} warm-up steps, precision {train.precision}; up to {data.max_train_per_task} training "
        f"examples per task",
        f"- **Training tasks ({len(data.tasks)}):** {', '.join(data.tasks)}",
        f"- **Test examples per task:** {test_counts}",
        f"- **Unseen tasks, zero-shot:** {unseen_counts}",
        f"- **Fit:** answer NLL on the first {config.eval.fit_per_task} training examples of each task, after "
        "training, in eval mode",
        f"- **Sweep:** methods {', '.join(study.methods)} x n in {study.experts} x seeds {study.seeds}, "
        f"axes {', '.join(study.axes)}" + (f" (total rank {study.total_rank})" if "fixed_total_rank" in study.axes
                                           else ""),
        f"- **Cells finished:** {len(records)}",
        "",
        _budget_text(found),
    ])


def _examples_per_task(record: dict | None, split: str) -> str:
    scores = (record or {}).get("metrics", {}).get(split)
    if not scores:
        return "-"
    per_task = scores.get("per_task", {})
    return ", ".join(f"{task} {values['n']}" for task, values in per_task.items()) + f" ({scores['n']} in all)"


def _budget_text(found: Gathered) -> str:
    """Whether the budget teaches the tasks: the best method at the search's n against the base model."""
    axis = next(iter(found.sweep), None)
    if axis is None or not found.base:
        return "Whether the budget learns is shown once the base model and the sweep have run."
    n = found.config.study.lr_experts if found.config.study.lr_experts in found.config.study.experts else max(
        found.config.study.experts)
    candidates = {m: _sides(found, axis, m, n) for m in found.config.study.methods if m != "base"}
    candidates = {m: records for m, records in candidates.items() if records}
    if not candidates:
        return "Whether the budget learns is shown once the sweep's cells have run."
    best = min(candidates, key=lambda m: mean(r["metrics"]["validation"][-1].get("macro_answer_nll")
                                               for r in candidates[m] if r["metrics"]["validation"]) or 0.0)
    nll = difference(candidates[best], [found.base], "test", "answer_nll")
    acc = difference(candidates[best], [found.base], "test", "acc")
    curves = "; ".join(f"{m} " + " -> ".join(f"{v['macro_answer_nll']:.3f}" for v in records[0]["metrics"]["validation"]
                                              if v.get("macro_answer_nll") is not None)
                       for m, records in candidates.items())
    steps = [v["step"] for v in candidates[best][0]["metrics"]["validation"]]
    return (f"Whether the budget teaches the tasks at all: the method with the best validation answer NLL at n={n} "
            f"({best}) against the untrained base model on the test split: answer NLL {describe(nll)}, accuracy "
            f"{describe(acc)}. Validation answer NLL at steps {', '.join(map(str, steps))} (first seed): {curves}. "
            "Where it still falls at the last step, a longer budget would fit more; the budget was set by the "
            "time a cell may take on the machine it was planned for, and every method gets the same one.")


def _learning_rate_section(found: Gathered) -> str:
    study = found.config.study
    if not study.lr_grid:
        return (f"## Learning rates\n\nOne rate for every method: {found.config.train.lr:g} (no `study.lr_grid`). "
                "A convex gate (softmax, top-k) hands each expert about 1/n of the update, so one shared rate "
                "may favour some n; this study does not correct for it.")
    rates = sorted({cell.lr for cell in found.lr_search})
    header = ["method", *(f"lr {lr:g}: val NLL / acc %" for lr in rates), "chosen"]
    searched = {(cell.method, cell.lr): record for cell, record in found.lr_search.items()}
    rows, edges = [], []
    for method in dict.fromkeys(cell.method for cell in found.lr_search):
        texts = [validation_text(searched[method, lr]) if (method, lr) in searched else "not tried" for lr in rates]
        chosen = (found.rates or {}).get(method)
        so_far = " so far" if any(searched[method, lr] is None for lr in rates if (method, lr) in searched) else ""
        rows.append([method, *texts,
                     f"{chosen:g}{so_far}" if chosen else ("pending" if found.rates is None else "none")])
        own = [lr for m, lr in searched if m == method]
        if chosen in (min(own), max(own)) and len(own) > 1:
            edges.append(method)
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


def _differences_section(found: Gathered, axis: str) -> str:
    experts = sorted({cell.n for cell in found.sweep[axis]})
    methods = [m for m in found.config.study.methods if m != "base"]
    header = ["n", "comparison", *(label for label, _, _ in CLAIMS)]
    rows = []
    for n in experts:
        for reference in REFERENCES:
            for method in methods:
                if method == reference:
                    continue
                a, b = _sides(found, axis, method, n), _sides(found, axis, reference, n)
                if a and b:
                    rows.append([str(n), f"{method} - {reference}",
                                 *(describe(difference(a, b, split, metric), short=True)
                                   for _, split, metric in CLAIMS)])
    title = f"## Every method against softmax, top-k and the base model ({axis})"
    return f"{title}\n\n" + (markdown_table(header, rows) if rows else "No finished pairs yet.")


def _growth_section(found: Gathered) -> str:
    lines = []
    for axis in found.sweep:
        growth = _growth_lines(found, axis, *((split, metric) for _, split, metric in CLAIMS))
        lines += [f"**{axis}**", "", *(growth or ["- not enough n yet"]), ""]
    note = ("(margin at the largest n minus margin at the smallest; for NLL negative, for accuracy positive, means "
            "RadarGate pulls ahead)")
    body = "\n".join(lines).rstrip() or "Not measured yet: the sweep has not started."
    return "\n\n".join(["## Does RadarGate's margin grow with n?", note, body])


def _summary_section(summary: list[dict], plots: list[Path]) -> str:
    header = ["axis", "method", "n", "r", "lr", "seeds", "train loss", "val NLL", "fit NLL", "test acc %", "test NLL",
              "unseen acc %", "unseen NLL", "wall s"]
    rows = [[e["axis"], e["method"], str(e["n"]), str(e["r"]), f"{e['lr']:g}", _seeds(e),
             _pm(e, "final_train_loss", 1, ".3f"), _pm(e, "validation_answer_nll", 1, ".3f"),
             _pm(e, "fit_answer_nll", 1, ".3f"), _pm(e, "test_acc", 100, ".1f"), _pm(e, "test_answer_nll", 1, ".3f"),
             _pm(e, "unseen_acc", 100, ".1f"), _pm(e, "unseen_answer_nll", 1, ".3f"), _pm(e, "wall_s", 1, ".0f")]
            for e in summary]
    figures = [f"![{path.stem}]({path})" for path in plots]
    return "\n\n".join(["## Means per cell (± std over seeds)", markdown_table(header, rows), *figures])


def _seeds(entry: dict) -> str:
    text = f"{entry['seeds']}/{entry['planned']}"
    return f"{text} ({entry['failed']} failed)" if entry["failed"] else text


def _headline_counts(found: Gathered) -> str | None:
    """The paper's form (RadarGate best in 90% of tasks) with the intervals' words: per task, then per gate,
    then every finished task's examples pooled into one interval per gate."""
    by_task = [_headline_records(found, task) for task in found.config.study.headline_tasks]
    verdicts = [v for v in map(_headline_verdicts, by_task) if v]
    if not verdicts:
        return None
    best = sum(all(d.verdict == "better" for d in v.values()) for v in verdicts)
    worse = sum(any(d.verdict == "worse" for d in v.values()) for v in verdicts)
    per_gate = []
    for method in [m for m in found.config.study.headline_methods if m != "radar"]:
        counted = Counter(v[method].verdict for v in verdicts if method in v)
        pooled = _headline_pooled(by_task, method)
        per_gate.append(f"against {method} better in {counted['better']}, no detectable difference in "
                        f"{counted['no detectable difference']}, worse in {counted['worse']}"
                        + (f"; all {pooled[1]} tasks pooled: {describe(pooled[0])}" if pooled else ""))
    return (f"The paper's headline replayed (each task trained alone, n={found.config.study.headline_experts}): "
            f"RadarGate fits better than every other gate in {best} of {len(verdicts)} tasks "
            f"({100 * best / len(verdicts):.0f}%; the paper reports 90%), worse than at least one in {worse}, "
            f"and otherwise not detectably different. By gate (fit NLL, RadarGate minus the gate): "
            + "; ".join(per_gate) + "." + _headline_completeness(found, len(verdicts)))


def _headline_completeness(found: Gathered, finished: int) -> str:
    planned = len(found.config.study.headline_tasks)
    return "" if finished == planned else (f" Only {finished} of the {planned} tasks have finished; rerun the study "
                                           "command for the rest.")


def _headline_records(found: Gathered, task: str) -> dict[str, dict]:
    return {cell.method: record for cell, record in found.headline.items()
            if cell.task == task and record and not record["failed"]}


def _headline_verdicts(records: dict[str, dict]) -> dict[str, Difference] | None:
    """RadarGate minus each other gate on one task's fit examples (``records``: that task's cells by method)."""
    if "radar" not in records or len(records) < 2:
        return None
    return {method: difference([records["radar"]], [record], "fit", "answer_nll")
            for method, record in records.items() if method != "radar"}


def _headline_pooled(by_task: list[dict[str, dict]], method: str) -> tuple[Difference, int] | None:
    """RadarGate minus ``method`` over the fit examples of every task both finished (examples are keyed by
    task, so pooling tasks is one paired comparison), and how many tasks that is."""
    pairs = [(records["radar"], records[method]) for records in by_task if "radar" in records and method in records]
    if not pairs:
        return None
    result = difference([radar for radar, _ in pairs], [other for _, other in pairs], "fit", "answer_nll")
    return (result, len(pairs)) if result is not None else None


def _headline_section(found: Gathered) -> str:
    study = found.config.study
    if not study.headline_tasks:
        return ""
    others = [m for m in study.headline_methods if m != "radar"]
    rows = []
    for task in study.headline_tasks:
        verdicts = _headline_verdicts(_headline_records(found, task)) or {}
        rows.append([task, *(describe(verdicts.get(m), short=True) for m in others)])
    note = (f"Each of {len(study.headline_tasks)} BIG-bench tasks trained alone at n={study.headline_experts} "
            f"({study.headline_steps or found.config.train.steps} steps, each method at its chosen rate, seed "
            f"{study.seeds[0]}); fitting loss = answer NLL on the task's first {found.config.eval.fit_per_task} "
            "training examples after training, RadarGate minus each gate.")
    return "\n\n".join(["## The paper's headline, replayed", note, _headline_counts(found) or "No task finished yet.",
                        markdown_table(["task", *(f"radar - {m} (fit NLL)" for m in others)], rows)])


def _diagnostics_section(summary: list[dict]) -> str:
    header = ["axis", "method", "n", "mean grad norm", "routing entropy (nats)", "busiest expert's share",
              "mean |angle| (rad)", "contrastive rho"]
    rows = [[e["axis"], e["method"], str(e["n"]), _pm(e, "mean_grad_norm", 1, ".3f"),
             _pm(e, "routing_entropy", 1, ".3f"), _pm(e, "busiest_expert_share", 1, ".2f"),
             _pm(e, "mean_abs_angle", 1, ".3f"), _pm(e, "contrast_rho", 1, ".2f")]
            for e in summary if e["method"] != "lora"]
    return "\n\n".join([
        "## Why: gradients, routing and angles",
        "Mean gradient norm over training steps (before clipping); the mean entropy of the gate's weights per "
        "token (uniform over n experts = ln n; top-k's is over its k chosen experts); the share of tokens whose "
        "highest weight goes to the layer's busiest expert (1/n: even use, 1: one expert takes all), averaged "
        "over layers; RadarGate's mean absolute rotation angle on the test inputs; and the contrastive analysis "
        "of the spec, the rank correlation between an expert's cosine with its partner before rotation and the "
        "change the rotation makes to it, averaged over layers (positive: the paper's finding that similar "
        "representations are pulled closer and distant ones pushed apart; near 0: no such pattern).",
        markdown_table(header, rows),
        *_diagnostic_trends(summary),
    ])


def _diagnostic_trends(summary: list[dict]) -> list[str]:
    """Each diagnostic from the smallest to the largest n measured, gate by gate: how training changes with n."""
    lines = []
    several_axes = len({e["axis"] for e in summary}) > 1
    for metric, label in (("mean_grad_norm", "mean gradient norm"), ("routing_entropy", "routing entropy"),
                          ("busiest_expert_share", "busiest expert's share"), ("mean_abs_angle", "mean |angle|"),
                          ("contrast_rho", "contrastive rho")):
        parts = []
        for axis, method in dict.fromkeys((e["axis"], e["method"]) for e in summary if e["method"] != "lora"):
            measured = sorted((e["n"], e[metric]) for e in summary
                              if (e["axis"], e["method"]) == (axis, method) and e[metric] is not None)
            if len(measured) > 1:
                name = f"{method} ({axis})" if several_axes else method
                parts.append(f"{name} " + " -> ".join(f"{value:.2f}" for _, value in measured)
                             + f" (n = {', '.join(str(n) for n, _ in measured)})")
        if parts:
            lines.append(f"- {label}: " + "; ".join(parts))
    return ["Across n, per gate:", "\n".join(lines)] if lines else []


def _timing_section(rows: dict[str, dict[str, Any]]) -> str:
    by_part: dict[str, list[float]] = defaultdict(list)
    for row in rows.values():
        if row["wall_s"] is not None:
            by_part[row["part"]].append(row["wall_s"])
    total = sum(sum(values) for values in by_part.values())
    lines = [f"- {part}: {len(values)} cells, {sum(values) / 60:.1f} min "
             f"(mean {statistics.mean(values):.0f} s per cell)"
             for part, values in sorted(by_part.items())]
    per_cell = markdown_table(
        ["cell", "wall s", "of which training s", "hardware"],
        [[name, number(row["wall_s"], ".0f"), number(row["train_s"], ".0f"), row["hardware"] or "-"]
         for name, row in sorted(rows.items())])
    return "\n".join(["## Time and hardware", "",
                      f"Wall time of every finished cell (training, test and unseen evaluation), summed: "
                      f"{total / 60:.1f} min; cells that ran in parallel overlap in real time.", "", *lines, "",
                      "<details><summary>Per cell</summary>", "", per_cell, "", "</details>"])


def _plots(summary: list[dict], config: ExperimentConfig, report_dir: Path) -> list[Path]:
    paths = []
    for axis in config.study.axes:
        entries = [e for e in summary if e["axis"] == axis]
        for metric in ("fit_answer_nll", "test_answer_nll", "test_acc", "unseen_answer_nll"):
            path = report_dir / f"{config.name}_plots" / f"{axis}_{metric}.png"
            plot_metric_against_experts(entries, metric, path)
            paths.append(path.relative_to(report_dir))
    return paths


def _pm(entry: dict, metric: str, scale: float, spec: str) -> str:
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
