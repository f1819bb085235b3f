"""Figures for reports, drawn with matplotlib's Agg canvas and written atomically as PNG files.

Figures are built on ``matplotlib.figure.Figure`` directly, not through ``pyplot``: no global
figure state, no GUI backend, nothing to close. Every function takes the data as the results
and routing summaries hold it (see ``comparison.py`` and ``experiment/routing.py``) and returns the path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from radargate.experiment.report.format import as_percent, is_number, number
from radargate.files import atomic_write

DPI = 120
SMALL_MULTIPLES = 5
"""Layers drawn one by one next to the aggregate view; spread evenly over depth."""


def plot_loss_curves(histories: Mapping[str, Sequence[Mapping]], path: str | Path) -> Path:
    """Training loss against step per method: raw values faint, a trailing moving average on top."""
    figure, axes = _figure(7.0, 4.0)
    drawn = False
    for color, (method, rows) in zip(_colors(len(histories)), histories.items(), strict=True):
        points = [(row["step"], row["loss"]) for row in rows if is_number(row.get("loss"))]
        if not points:
            continue
        steps, losses = (np.asarray(values, dtype=np.float64) for values in zip(*points, strict=True))
        axes.plot(steps, losses, color=color, alpha=0.25, linewidth=0.8)
        axes.plot(steps, moving_average(losses), color=color, label=method)
        drawn = True
    axes.set(xlabel="step", ylabel="training loss", title="Training loss")
    if drawn:
        axes.legend()
    else:
        _note(axes, "no training history")
    return _save(figure, path)


def moving_average(values: np.ndarray) -> np.ndarray:
    """Trailing mean over a window of a tenth of the curve: light smoothing at any length."""
    window = max(1, len(values) // 10)
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


def plot_task_accuracy(results: Mapping[str, Mapping], path: str | Path) -> Path:
    """Grouped bars of test accuracy (%) per task and method; the macro average is the last group."""
    colors = dict(zip(results, _colors(len(results)), strict=True))
    methods = {name: method["test"] for name, method in results.items() if method.get("test")}
    tasks = list(dict.fromkeys(task for test in methods.values() for task in test.get("per_task", {})))
    groups = [*tasks, "macro"]
    figure, axes = _figure(max(6.0, 0.35 * len(groups) * max(len(methods), 2)), 4.5)
    width = 0.8 / max(len(methods), 1)
    positions = np.arange(len(groups))
    for index, (method, test) in enumerate(methods.items()):
        per_task = test.get("per_task", {})
        accuracies = [per_task.get(task, {}).get("acc") for task in tasks] + [test.get("macro_acc")]
        values = [_percent_or_nan(accuracy) for accuracy in accuracies]
        offset = (index - (len(methods) - 1) / 2) * width
        axes.bar(positions + offset, values, width, color=colors[method], label=method)
    axes.set_xticks(positions, groups, rotation=30, ha="right")
    axes.set(ylabel="test accuracy (%)", ylim=(0, 100), title="Test accuracy per task")
    if methods:
        axes.legend(fontsize="small")
    else:
        _note(axes, "no test results")
    return _save(figure, path)


def plot_gate_weights(routing: Mapping[str, Mapping], path: str | Path, title: str) -> Path:
    """Heatmap of the mean gate weight per layer (rows) and expert (columns)."""
    layers = [name for name, layer in routing.items() if layer.get("mean_weight")]
    weights = np.asarray([routing[name]["mean_weight"] for name in layers], dtype=np.float64)
    figure, axes = _figure(max(4.0, 0.6 * weights.shape[-1] + 3.0) if layers else 5.0, 1.5 + 0.22 * len(layers))
    if not layers:
        _note(axes, "no routing statistics")
        axes.set_title(title)
        return _save(figure, path)
    image = axes.imshow(weights, aspect="auto", cmap="viridis")
    axes.set_xticks(range(weights.shape[1]), [str(expert) for expert in range(weights.shape[1])])
    axes.set_yticks(range(len(layers)), short_layer_names(layers), fontsize="small")
    axes.set(xlabel="expert", title=title)
    if weights.size <= 160:
        middle = (weights.min() + weights.max()) / 2
        for (row, column), value in np.ndenumerate(weights):
            axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize="x-small",
                      color="white" if value < middle else "black")
    figure.colorbar(image, ax=axes, label="mean gate weight")
    return _save(figure, path)


def plot_angle_histograms(routing: Mapping[str, Mapping], path: str | Path) -> Path:
    """RadarGate angles: the histogram pooled over all layers, then a few layers on their own."""
    layers = [name for name, layer in routing.items() if layer.get("theta_hist")]
    chosen = pick_evenly(layers, SMALL_MULTIPLES)
    figure = Figure(figsize=(3.0 * max(len(chosen), 2), 6.0), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, max(len(chosen), 1))
    pooled = figure.add_subplot(grid[0, :])
    if not layers:
        _note(pooled, "no RadarGate layers")
        return _save(figure, path)
    counts, edges = pooled_histogram([routing[name]["theta_hist"] for name in layers])
    pooled.stairs(counts / max(counts.sum(), 1), edges, fill=True, alpha=0.7)
    pooled.axvline(0.0, color="black", linewidth=0.8)
    pooled.set(xlabel="rotation angle θ (rad)", ylabel="share of samples",
               title=f"All {len(layers)} RadarGate layers ({int(counts.sum())} samples)")
    for column, (name, short) in enumerate(zip(chosen, short_layer_names(chosen), strict=True)):
        layer = routing[name]
        axes = figure.add_subplot(grid[1, column])
        hist = layer["theta_hist"]
        axes.stairs(hist["counts"], hist["edges"], fill=True, alpha=0.7)
        axes.axvline(0.0, color="black", linewidth=0.8)
        axes.set_title(f"{short}\nmean θ {number(layer.get('theta_mean'), '.2f')}, "
                       f"mean |θ| {number(layer.get('theta_abs_mean'), '.2f')}", fontsize="small")
        axes.set_xlabel("θ (rad)", fontsize="small")
    return _save(figure, path)


def pooled_histogram(histograms: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray]:
    """Sum of histograms on a grid spanning them all (exact when they share edges, as
    ``summarize_routing`` makes them; otherwise each bin is moved whole to where its centre falls)."""
    all_edges = [np.asarray(hist["edges"], dtype=np.float64) for hist in histograms]
    bins = max(len(edges) - 1 for edges in all_edges)
    grid = np.linspace(min(edges[0] for edges in all_edges), max(edges[-1] for edges in all_edges), bins + 1)
    centres = np.concatenate([(edges[:-1] + edges[1:]) / 2 for edges in all_edges])
    weights = np.concatenate([np.asarray(hist["counts"], dtype=np.float64) for hist in histograms])
    counts, _ = np.histogram(centres, bins=grid, weights=weights)
    return counts, grid


def plot_contrast(routing: Mapping[str, Mapping], path: str | Path) -> Path:
    """cos_before against cos_change per (token, expert) sample, coloured by the angle.

    The first panel pools the stored sample points of every layer; the others are single layers
    with their Spearman rho and its shuffled-angle baseline from the routing summary.
    """
    layers = [name for name, layer in routing.items() if layer.get("contrast")]
    panels = [None, *pick_evenly(layers, SMALL_MULTIPLES)]
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(3.6 * columns + 1.0, 3.3 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, columns, squeeze=False).reshape(-1)
    for axes in grid[len(panels):]:
        axes.set_visible(False)
    if not layers:
        _note(grid[0], "no RadarGate layers")
        return _save(figure, path)
    limit = max(max(map(abs, routing[name]["contrast"]["points"]["theta"]), default=0.0) for name in layers)
    norm = Normalize(-max(limit, 1e-6), max(limit, 1e-6))
    names = dict(zip(layers, short_layer_names(layers), strict=True))
    for axes, name in zip(grid, panels, strict=False):
        points = _contrast_points(routing, layers if name is None else [name])
        axes.scatter(points["cos_before"], points["cos_change"], c=points["theta"], cmap="coolwarm", norm=norm,
                     s=6, alpha=0.7, linewidths=0)
        axes.axhline(0.0, color="black", linewidth=0.8)
        axes.set_xlim(-1.05, 1.05)
        axes.set_xlabel("cos before rotation", fontsize="small")
        axes.set_ylabel("cos after − cos before", fontsize="small")
        axes.set_title(_contrast_title(routing, name, names), fontsize="small")
    figure.colorbar(ScalarMappable(norm=norm, cmap="coolwarm"), ax=list(grid[: len(panels)]), label="θ (rad)")
    return _save(figure, path)


def _contrast_points(routing: Mapping[str, Mapping], layers: Sequence[str]) -> dict[str, list[float]]:
    return {key: [value for name in layers for value in routing[name]["contrast"]["points"][key]]
            for key in ("cos_before", "cos_change", "theta")}


def _contrast_title(routing: Mapping[str, Mapping], name: str | None, names: Mapping[str, str]) -> str:
    if name is None:
        return f"all {len(names)} layers (sample points)"
    contrast = routing[name]["contrast"]
    return (f"{names[name]}\nρ = {number(contrast['spearman_cos_before_vs_change'], '+.2f')} "
            f"(shuffled θ {number(contrast.get('spearman_shuffled_theta_baseline'), '+.2f')}), n = {contrast['n']}")


def short_layer_names(names: Sequence[str]) -> list[str]:
    """Layer names without the dotted prefix they all share (``model.layers.``)."""
    if len(names) < 2:
        return list(names)
    parts = [name.split(".") for name in names]
    shared = 0
    while all(len(part) > shared + 1 and part[shared] == parts[0][shared] for part in parts):
        shared += 1
    return [".".join(part[shared:]) for part in parts]


def pick_evenly(items: Sequence[str], count: int) -> list[str]:
    """At most ``count`` items spread from first to last, so small multiples span the depth."""
    if len(items) <= count:
        return list(items)
    return [items[index] for index in np.unique(np.linspace(0, len(items) - 1, count).round().astype(int))]


def plot_metric_against_experts(summary: Sequence[Mapping], metric: str, path: str | Path) -> Path:
    """One line per method: ``metric`` (mean over seeds, error bars one std) against the number of experts."""
    figure, axes = _figure(6.0, 4.0)
    methods = list(dict.fromkeys(entry["method"] for entry in summary))
    scale = 100.0 if metric.endswith("_acc") else 1.0
    drawn = False
    for color, method in zip(_colors(len(methods)), methods, strict=True):
        entries = sorted((e for e in summary if e["method"] == method and is_number(e[metric])), key=lambda e: e["n"])
        if not entries:
            continue
        spread = [scale * e[f"{metric}_std"] if is_number(e[f"{metric}_std"]) else 0.0 for e in entries]
        axes.errorbar([e["n"] for e in entries], [scale * e[metric] for e in entries], yerr=spread,
                      color=color, marker="o", capsize=3, label=method)
        drawn = True
    axes.set_xscale("log", base=2)
    axes.set_xlabel("experts n")
    axes.set_ylabel(metric.replace("_", " ") + (" (%)" if scale == 100.0 else ""))
    if drawn:
        axes.legend()
    else:
        _note(axes, "no finished cells")
    return _save(figure, path)


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI))
    return path


def _colors(count: int) -> list[tuple[float, ...]]:
    """Distinct colours in a fixed order, so a method keeps its colour across figures."""
    palette = colormaps["tab10"]
    return [palette(index % 10) for index in range(count)]


def _note(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes)


def _percent_or_nan(value: object) -> float:
    """A bar's height: the percentage, or NaN (no bar) where the value is missing."""
    percent = as_percent(value)
    return math.nan if percent is None else percent
