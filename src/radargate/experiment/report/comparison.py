"""Markdown report of one comparison run, with its figures, written into the run folder.

Every number in the report is read from the results dict that ``compare`` produces; a piece the
dict lacks (no validation, no routing for plain LoRA, no loss for the untrained base) is shown
as "-" or left out, never filled in. Accuracies are percentages with one decimal, losses have
three decimals.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from radargate.experiment.report import plots
from radargate.experiment.report.format import MISSING, is_number, number, percent, signed_difference
from radargate.experiment.report.intervals import Difference, paired_difference
from radargate.experiment.routing import summarize_contrast
from radargate.files import atomic_write_text

PLOTS_DIR = "plots"


def write_report(results: Mapping, run_dir: str | Path) -> Path:
    """Draw the figures into ``run_dir/plots/`` and write ``run_dir/report.md``; return its path."""
    run_dir = Path(run_dir)
    sections = [
        _header(results),
        "## Comparison",
        comparison_table(results),
        differences_section(results),
        _failures_section(results),
        _per_task_section(results),
        _figures_section(results, run_dir),
        *(routing_section(method, summary["routing"], run_dir)
          for method, summary in results.get("methods", {}).items() if summary.get("routing")),
    ]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n\n".join(section for section in sections if section) + "\n")
    return path


def comparison_table(results: Mapping) -> str:
    """One row per method: size, training loss and time, fit, validation and test scores (accuracies only where
    the data has choices, exact match only where it has completions: chat data is scored by answer NLL alone)."""
    columns = _TABLE_COLUMNS if _has_accuracy(results) else _NLL_COLUMNS
    if _has_exact_match(results):
        at = next(i for i, (header, _) in enumerate(columns) if header == "test answer NLL") + 1
        columns = [*columns[:at], _EXACT_MATCH_COLUMN, *columns[at:]]
    rows = [[f"{name} (failed)" if method.get("failed") else name, *(cell(method) for _, cell in columns)]
            for name, method in results.get("methods", {}).items()]
    return markdown_table(["method", *(header for header, _ in columns)], rows)


def _has_accuracy(results: Mapping) -> bool:
    """Whether any method was scored by accuracy (multiple-choice data)."""
    return any(is_number((method.get("test") or {}).get("macro_acc")) for method in results.get("methods", {}).values())


def _has_exact_match(results: Mapping) -> bool:
    """Whether any method was scored by exact match (completion data)."""
    return any(is_number((method.get("test") or {}).get("macro_exact_match"))
               for method in results.get("methods", {}).values())


def _last_validation(method: Mapping, metric: str) -> object:
    validation = method.get("validation") or []
    return validation[-1].get(metric) if validation else None


_SIZE_AND_FIT = [
    ("trainable params", lambda m: _count(m.get("trainable_params"))),
    ("final train loss", lambda m: number(m.get("final_train_loss"), ".3f")),
    ("fit answer NLL", lambda m: number((m.get("fit") or {}).get("macro_answer_nll"), ".3f")),
]
_TEST_NLL_AND_SPEED = [
    ("test answer NLL", lambda m: number((m.get("test") or {}).get("macro_answer_nll"), ".3f")),
    ("train time (s)", lambda m: number(m.get("train_time_s"), ".1f")),
    ("tokens/s", lambda m: number(m.get("tokens_per_s"), ",.0f")),
]
_TABLE_COLUMNS = [
    *_SIZE_AND_FIT,
    ("val macro acc (%, last eval)", lambda m: percent(_last_validation(m, "macro_acc"))),
    ("test macro acc (%)", lambda m: percent((m.get("test") or {}).get("macro_acc"))),
    ("test macro acc_norm (%)", lambda m: percent((m.get("test") or {}).get("macro_acc_norm"))),
    *_TEST_NLL_AND_SPEED,
]
_NLL_COLUMNS = [
    *_SIZE_AND_FIT,
    ("val answer NLL (last eval)", lambda m: number(_last_validation(m, "macro_answer_nll"), ".3f")),
    *_TEST_NLL_AND_SPEED,
]


_EXACT_MATCH_COLUMN = ("test exact match (%)", lambda m: percent((m.get("test") or {}).get("macro_exact_match")))


REFERENCES = ("base", "softmax", "topk")
"""Every method is compared with each of these that ran: the untrained model and the weighted-sum gates."""
COMPARED = (("test", "acc"), ("test", "answer_nll"), ("test", "exact_match"), ("fit", "answer_nll"))


def differences_section(results: Mapping) -> str:
    """Each method minus each reference, per example, with 95% paired-bootstrap intervals and verdicts."""
    methods = {name: m for name, m in results.get("methods", {}).items() if not m.get("failed")}
    rows = []
    for reference in (r for r in REFERENCES if r in methods):
        for name in (n for n in methods if n != reference):
            for split, metric in COMPARED:
                a, b = methods[name].get(split), methods[reference].get(split)
                if a and b and "examples" in a and "examples" in b and a.get(f"macro_{metric}") is not None:
                    rows.append(_difference_row(name, reference, split, paired_difference([a], [b], metric)))
    if not rows:
        return ""
    header = ["comparison", "split", "metric", "mean difference", "95% interval", "examples", "verdict"]
    note = ("Per-example differences (accuracy and exact match in points, answer NLL in nats per token; lower NLL is "
            "better), "
            "95% percentile intervals from a paired bootstrap over examples (scipy); \"better\"/\"worse\" only "
            "where the interval excludes zero. One seed per method here, so seed-to-seed variation is not "
            "in these intervals.")
    return "## Differences with 95% confidence intervals\n\n" + note + "\n\n" + markdown_table(header, rows)


def _difference_row(name: str, reference: str, split: str, difference: Difference) -> list[str]:
    signed = functools.partial(signed_difference, difference.metric)
    return [f"{name} - {reference}", split, difference.metric, signed(difference.mean),
            f"[{signed(difference.low)}, {signed(difference.high)}]", str(difference.n), difference.verdict]


def _failures_section(results: Mapping) -> str:
    failed = {name: method["failed"] for name, method in results.get("methods", {}).items() if method.get("failed")}
    if not failed:
        return ""
    return "## Failed runs\n\n" + "\n".join(f"- **{name}**: {reason}" for name, reason in failed.items())


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(str(cell).replace("|", "\\|") for cell in line) + " |" for line in lines)


def _header(results: Mapping) -> str:
    lines = [f"# radargate comparison: {results.get('name', 'run')}", ""]
    facts = [
        ("Model", results.get("model")),
        ("Tasks", _tasks_line(results.get("tasks"))),
        ("Split sizes (examples)", _splits_line(results.get("split_sizes"))),
        ("Hardware", results.get("hardware")),
        ("Training steps", results.get("steps")),
        ("Seed", results.get("seed")),
        ("Wall time", None if results.get("wall_time_s") is None else f"{number(results['wall_time_s'], '.1f')} s"),
    ]
    lines += [f"- **{label}:** {value}" for label, value in facts if value is not None]
    return "\n".join(lines)


def _tasks_line(tasks: Sequence[str] | None) -> str | None:
    return f"{len(tasks)}: {', '.join(tasks)}" if tasks else None


def _splits_line(splits: Mapping[str, int] | None) -> str | None:
    return ", ".join(f"{split} {size}" for split, size in splits.items()) if splits else None


def _per_task_section(results: Mapping) -> str:
    """Tasks by methods, test accuracy (%), or answer NLL where no method has an accuracy; ``n`` lists each distinct
    count the methods report."""
    methods = {name: method["test"] for name, method in results.get("methods", {}).items() if method.get("test")}
    if not methods:
        return ""
    metric, title, shown = (("acc", "Test accuracy per task (%)", percent) if _has_accuracy(results)
                            else ("answer_nll", "Test answer NLL per task", lambda value: number(value, ".3f")))
    per_task = [test.get("per_task", {}) for test in methods.values()]
    tasks = list(dict.fromkeys([*(results.get("tasks") or []), *(task for rows in per_task for task in rows)]))
    rows = [
        [task, *(shown(rows.get(task, {}).get(metric)) for rows in per_task),
         _counts([rows.get(task, {}).get("n") for rows in per_task])]
        for task in tasks
    ]
    rows.append(["**macro**", *(shown(test.get(f"macro_{metric}")) for test in methods.values()),
                 _counts([test.get("n") for test in methods.values()])])
    return f"## {title}\n\n" + markdown_table(["task", *methods, "n"], rows)


def _figures_section(results: Mapping, run_dir: Path) -> str:
    methods = results.get("methods", {})
    lines = []
    histories = {name: method.get("history") or [] for name, method in methods.items()}
    if any(histories.values()):
        plots.plot_loss_curves(histories, run_dir / PLOTS_DIR / "loss_curves.png")
        lines.append(f"![Training loss per step]({PLOTS_DIR}/loss_curves.png)")
    if _has_accuracy(results):
        plots.plot_task_accuracy(methods, run_dir / PLOTS_DIR / "task_accuracy.png")
        lines.append(f"![Test accuracy per task]({PLOTS_DIR}/task_accuracy.png)")
    return "## Figures\n\n" + "\n\n".join(lines) if lines else ""


def routing_section(method: str, routing: Mapping[str, Mapping], run_dir: Path, plots_dir: str = PLOTS_DIR) -> str:
    """Gate weights for every routed method; angles and the contrastive analysis for RadarGate.
    Figures go to ``run_dir / plots_dir``, linked relative to ``run_dir``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", method)
    lines = [f"## Routing: {method}"]
    if any(layer.get("mean_weight") for layer in routing.values()):
        name = f"gate_weights_{stem}.png"
        plots.plot_gate_weights(routing, run_dir / plots_dir / name, f"{method}: mean gate weight")
        lines.append(f"![Mean gate weight per layer and expert, {method}]({plots_dir}/{name})")
    if any(layer.get("theta_hist") for layer in routing.values()):
        name = f"angles_{stem}.png"
        plots.plot_angle_histograms(routing, run_dir / plots_dir / name)
        lines.append(f"![RadarGate rotation angles, {method}]({plots_dir}/{name})")
    if any(layer.get("contrast") for layer in routing.values()):
        name = f"contrast_{stem}.png"
        plots.plot_contrast(routing, run_dir / plots_dir / name)
        lines.append(f"![Contrastive analysis, {method}]({plots_dir}/{name})")
        lines.append(_contrast_text(routing))
    return "\n\n".join(lines)


CONTRAST_NOTE = (
    "Contrastive analysis: ρ is the Spearman rank correlation between the cosine of an expert's output "
    "with its fused partner before rotation and the change the rotation makes to it, over the recorded "
    "(token, expert) samples. ρ > 0 means the rotation raises cosines that were high and lowers those "
    "that were low (the paper's prediction). A cosine near ±1 can only move inwards, so angles unrelated "
    "to the cosine already give ρ < 0: the shuffled-θ column is ρ for the same angles in random order, "
    "the baseline to compare with."
)


def _contrast_text(routing: Mapping[str, Mapping]) -> str:
    summary = summarize_contrast(routing)
    rows = [
        [row["layer"], str(routing[row["layer"]]["tokens"]), number(routing[row["layer"]].get("theta_mean"), "+.3f"),
         number(routing[row["layer"]].get("theta_abs_mean"), ".3f"), number(row["rho"], "+.3f"),
         number(row["rho_shuffled_theta_baseline"], "+.3f"), number(row["rho_theta_vs_cos_before"], "+.3f"),
         str(row["n"])]
        for row in summary["per_layer"]
    ]
    table = markdown_table(["layer", "tokens", "mean θ (rad)", "mean |θ| (rad)", "ρ(cos before, change)",
                            "shuffled-θ baseline", "ρ(θ, cos before)", "samples"], rows)
    overall = (
        f"Over {summary['layers']} RadarGate layers: mean ρ {number(summary['mean_rho'], '+.3f')} "
        f"(shuffled-θ baseline {number(summary['mean_rho_shuffled_theta_baseline'], '+.3f')}); "
        f"ρ > 0 in {summary['positive']}, ρ < 0 in {summary['negative']}, undefined in {summary['undefined']}."
    )
    return "\n\n".join([CONTRAST_NOTE, overall, table])


def _count(value: object) -> str:
    return format(value, ",") if isinstance(value, int) and not isinstance(value, bool) else MISSING


def _counts(values: Sequence[object]) -> str:
    distinct = list(dict.fromkeys(value for value in values if isinstance(value, int)))
    return "/".join(str(value) for value in distinct) if distinct else MISSING
