"""What a run computes about its routing: the statistics of the forward pass reduced to plain, JSON-sized
numbers per layer, stored in the run's result; the reports read them there.

The contrastive analysis asks whether RadarGate's rotation raises the cosine between an expert
and its fused partner where it was already high and lowers it where it was low. It is measured
as the Spearman rank correlation between ``cos_before`` and ``cos_change = cos_after -
cos_before`` over every recorded (token, expert) sample; the sign is reported, never assumed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from radargate.stats import RoutingStats

RADAR_KEYS = ("theta", "cos_before", "cos_after")
"""Sample keys of ``RoutingStats.summary()`` that mark a RadarGate layer."""

DIGITS = 5
"""Decimals kept for plotted sample points: enough for a scatter plot, small in JSON."""


def average_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return ((last - counts + 1 + last) / 2.0)[inverse.reshape(-1)]


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho (Pearson correlation of average ranks) over the pairs where both are finite.

    NaN when fewer than two pairs remain or either side is constant: no rank order exists then.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"spearman needs paired samples; got {x.size} and {y.size} values")
    keep = np.isfinite(x) & np.isfinite(y)
    count = int(keep.sum())
    if count < 2:
        return math.nan
    rank_x = average_ranks(x[keep]) - (count + 1) / 2.0
    rank_y = average_ranks(y[keep]) - (count + 1) / 2.0
    scale = math.sqrt(float(rank_x @ rank_x) * float(rank_y @ rank_y))
    return float(rank_x @ rank_y) / scale if scale > 0 else math.nan


def summarize_routing(
    stats: Mapping[str, RoutingStats], *, max_points: int = 500, bins: int = 36, seed: int = 0
) -> dict[str, dict]:
    """Per layer: token count, mean weight and top-choice share per expert, mean entropy.

    RadarGate layers add an angle histogram and the contrastive analysis (see module docstring)
    with at most ``max_points`` sample points for plots. All layers share one histogram range,
    ``[-pi/2, pi/2]`` widened to the data if needed, so histograms can be summed across layers.
    Layers that saw no tokens are left out: they have nothing to report.
    """
    summaries = {name: layer.summary() for name, layer in stats.items()}
    summaries = {name: summary for name, summary in summaries.items() if summary["tokens"]}
    theta_range = _angle_range(summary["theta"] for summary in summaries.values() if "theta" in summary)
    return {
        name: _summarize_layer(summary, theta_range=theta_range, max_points=max_points, bins=bins, seed=seed)
        for name, summary in summaries.items()
    }


def _summarize_layer(
    summary: dict, *, theta_range: tuple[float, float], max_points: int, bins: int, seed: int
) -> dict:
    result = {key: summary[key] for key in ("tokens", "mean_weight", "top_choice_share", "mean_entropy")}
    if all(key in summary for key in RADAR_KEYS):
        theta, before, after = (np.asarray(summary[key], dtype=np.float64) for key in RADAR_KEYS)
        result.update(_angle_summary(theta, theta_range, bins))
        result["contrast"] = contrast(theta, before, after, max_points=max_points, seed=seed)
    return result


def _angle_range(thetas: Iterable[Sequence[float]]) -> tuple[float, float]:
    low, high = -math.pi / 2, math.pi / 2
    for theta in thetas:
        finite = np.asarray(theta, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    return low, high


def _angle_summary(theta: np.ndarray, theta_range: tuple[float, float], bins: int) -> dict:
    theta = theta[np.isfinite(theta)]
    counts, edges = np.histogram(theta, bins=bins, range=theta_range)
    return {
        "theta_hist": {"edges": edges.tolist(), "counts": counts.tolist()},
        "theta_mean": float(theta.mean()) if theta.size else None,
        "theta_abs_mean": float(np.abs(theta).mean()) if theta.size else None,
    }


def contrast(
    theta: np.ndarray, cos_before: np.ndarray, cos_after: np.ndarray, *, max_points: int = 500, seed: int = 0
) -> dict:
    """Rank correlations of the contrastive analysis and a deterministic sample of its points.

    Samples with a NaN anywhere are dropped first. An undefined correlation (too few samples,
    or a constant side, as at initialisation where every expert output is zero) is ``None``.
    """
    keep = np.isfinite(theta) & np.isfinite(cos_before) & np.isfinite(cos_after)
    theta, cos_before, cos_change = theta[keep], cos_before[keep], cos_after[keep] - cos_before[keep]
    chosen = subsample(theta.size, max_points, seed=seed)
    return {
        "spearman_cos_before_vs_change": _finite_or_none(spearman(cos_before, cos_change)),
        "spearman_theta_vs_cos_before": _finite_or_none(spearman(theta, cos_before)),
        "spearman_shuffled_theta_baseline": _finite_or_none(shuffled_angle_baseline(theta, cos_before, seed=seed)),
        "n": int(theta.size),
        "points": {
            "cos_before": np.round(cos_before[chosen], DIGITS).tolist(),
            "theta": np.round(theta[chosen], DIGITS).tolist(),
            "cos_change": np.round(cos_change[chosen], DIGITS).tolist(),
        },
    }


def shuffled_angle_baseline(theta: np.ndarray, cos_before: np.ndarray, *, seed: int = 0) -> float:
    """rho between ``cos_before`` and the change the same angles would make in shuffled order."""
    shuffled = np.random.default_rng(seed).permutation(theta)
    change = np.cos(np.arccos(np.clip(cos_before, -1.0, 1.0)) - shuffled) - cos_before
    return spearman(cos_before, change)


def subsample(size: int, max_points: int, *, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``size`` items, the same for the same seed."""
    if size <= max_points:
        return np.arange(size)
    return np.sort(np.random.default_rng(seed).choice(size, size=max_points, replace=False))


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def summarize_contrast(routing_summary: Mapping[str, dict]) -> dict:
    """Across RadarGate layers: how many show a positive / negative rho, the mean rho and baseline.

    Layers whose rho is undefined are listed but left out of the mean and the counts.
    """
    per_layer = [
        {
            "layer": name,
            "rho": layer["contrast"]["spearman_cos_before_vs_change"],
            "rho_theta_vs_cos_before": layer["contrast"]["spearman_theta_vs_cos_before"],
            "rho_shuffled_theta_baseline": layer["contrast"]["spearman_shuffled_theta_baseline"],
            "n": layer["contrast"]["n"],
        }
        for name, layer in routing_summary.items()
        if layer.get("contrast")
    ]
    rhos = [row["rho"] for row in per_layer if row["rho"] is not None]
    baselines = [row["rho_shuffled_theta_baseline"] for row in per_layer]
    baselines = [value for value in baselines if value is not None]
    return {
        "layers": len(per_layer),
        "mean_rho": float(np.mean(rhos)) if rhos else None,
        "mean_rho_shuffled_theta_baseline": float(np.mean(baselines)) if baselines else None,
        "positive": sum(rho > 0 for rho in rhos),
        "negative": sum(rho < 0 for rho in rhos),
        "undefined": len(per_layer) - len(rhos),
        "per_layer": per_layer,
    }
