"""Routing summaries for reports: Spearman's rho, per-layer reductions, the contrastive analysis."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from radargate.experiment.routing import (
    average_ranks,
    spearman,
    subsample,
    summarize_contrast,
    summarize_routing,
)
from radargate.gates.base import GateOutput
from radargate.stats import MAX_SAMPLES, SAMPLES_PER_CALL, RoutingStats
from tests.conftest import molora, randomize_adapters, token_batch


def radar_stats(seed: int = 0, tokens: int = 50, experts: int = 3, theta_scale: float = 1.0) -> RoutingStats:
    """RoutingStats fed like a RadarGate layer: cosines after rotation follow ``cos(phi - theta)``."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.softmax(torch.randn(tokens, experts, generator=generator), dim=-1)
    theta = theta_scale * torch.tanh(torch.randn(tokens, experts, generator=generator))
    cos_before = torch.rand(tokens, experts, generator=generator) * 2 - 1
    cos_after = torch.cos(torch.arccos(cos_before) - theta)
    stats = RoutingStats(experts)
    extras = {"theta": theta, "cos_before": cos_before, "cos_after": cos_after}
    stats.update(GateOutput(delta=torch.zeros(tokens, 4), weights=weights, extras=extras))
    return stats


def plain_stats(weights: torch.Tensor) -> RoutingStats:
    stats = RoutingStats(weights.shape[1])
    stats.update(GateOutput(delta=torch.zeros(weights.shape[0], 4), weights=weights))
    return stats


def loop_average_ranks(values: list[float]) -> list[float]:
    """Independent reference: rank = 1 + number smaller + (number equal - 1) / 2."""
    return [1 + sum(v < x for v in values) + (sum(v == x for v in values) - 1) / 2 for x in values]


# -- spearman ------------------------------------------------------------------------------------


def test_spearman_hand_computed_with_ties():
    # ranks of y: [1, 2, 3.5, 5, 3.5]; centred products sum to 8, squares to 10 and 9.5
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95), abs=1e-12)


def test_spearman_without_ties_matches_the_textbook_formula():
    # d = [-2, 1, -1, -1, 3], sum d^2 = 16: rho = 1 - 6 * 16 / (5 * 24) = 0.2
    assert spearman([10, 20, 30, 40, 50], [3, 1, 4, 5, 2]) == pytest.approx(0.2, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-4, 4), st.integers(-4, 4)), min_size=3, max_size=30))
def test_spearman_is_pearson_of_average_ranks(pairs):
    x, y = (list(map(float, values)) for values in zip(*pairs, strict=True))
    rank_x, rank_y = loop_average_ranks(x), loop_average_ranks(y)
    np.testing.assert_array_equal(average_ranks(x), rank_x)
    if len(set(x)) < 2 or len(set(y)) < 2:
        assert math.isnan(spearman(x, y))
    else:
        assert spearman(x, y) == pytest.approx(np.corrcoef(rank_x, rank_y)[0, 1], abs=1e-12)


def test_spearman_is_one_for_any_increasing_map_and_minus_one_for_decreasing():
    x = np.random.default_rng(0).normal(size=200)
    assert spearman(x, np.exp(3 * x)) == pytest.approx(1.0)
    assert spearman(x, -(x**3)) == pytest.approx(-1.0)


def test_spearman_drops_pairs_with_nan():
    assert spearman([1, math.nan, 2, 3, 4], [4, 1, 3, 2, math.nan]) == pytest.approx(-1.0)


def test_spearman_is_nan_without_a_rank_order_and_rejects_unpaired_input():
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1], [2]))
    with pytest.raises(ValueError, match="3 and 2"):
        spearman([1, 2, 3], [1, 2])


# -- per-layer summaries -------------------------------------------------------------------------


def test_plain_layer_summary_has_weights_shares_entropy_and_no_radar_parts():
    weights = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.2, 0.7], [0.8, 0.1, 0.1], [0.2, 0.6, 0.2]], dtype=torch.float64)
    layer = summarize_routing({"layer": plain_stats(weights)})["layer"]
    assert layer["tokens"] == 4
    np.testing.assert_allclose(layer["mean_weight"], weights.mean(0).numpy())
    assert layer["top_choice_share"] == [0.5, 0.25, 0.25]
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1).mean()
    assert layer["mean_entropy"] == pytest.approx(float(entropy))
    assert not {"theta_hist", "contrast", "theta_mean"} & set(layer)


def test_layers_without_tokens_are_left_out():
    summary = summarize_routing({"ran": radar_stats(), "idle": RoutingStats(3)})
    assert list(summary) == ["ran"]


def test_radar_layer_has_angle_histogram_means_and_contrast():
    stats = radar_stats(tokens=40, experts=3)
    raw = stats.summary()
    layer = summarize_routing({"layer": stats}, bins=12)["layer"]
    theta = np.asarray(raw["theta"])
    hist = layer["theta_hist"]
    assert len(hist["edges"]) == 13 and len(hist["counts"]) == 12
    assert hist["edges"][0] == pytest.approx(-math.pi / 2) and hist["edges"][-1] == pytest.approx(math.pi / 2)
    np.testing.assert_array_equal(hist["counts"], np.histogram(theta, bins=12, range=(-math.pi / 2, math.pi / 2))[0])
    assert layer["theta_mean"] == pytest.approx(theta.mean())
    assert layer["theta_abs_mean"] == pytest.approx(np.abs(theta).mean())
    change = np.asarray(raw["cos_after"]) - np.asarray(raw["cos_before"])
    contrast = layer["contrast"]
    assert contrast["n"] == 120
    assert contrast["spearman_cos_before_vs_change"] == pytest.approx(spearman(raw["cos_before"], change))
    assert contrast["spearman_theta_vs_cos_before"] == pytest.approx(spearman(theta, raw["cos_before"]))


def test_histogram_range_widens_to_angles_outside_half_pi_and_is_shared_by_layers():
    summary = summarize_routing({"wide": radar_stats(theta_scale=2.5), "narrow": radar_stats(seed=1)})
    wide, narrow = summary["wide"]["theta_hist"], summary["narrow"]["theta_hist"]
    theta = radar_stats(theta_scale=2.5).summary()["theta"]
    assert wide["edges"][0] == pytest.approx(min(theta)) and wide["edges"][-1] == pytest.approx(max(theta))
    assert narrow["edges"] == wide["edges"]
    assert sum(wide["counts"]) == len(theta)


def test_points_are_capped_deterministic_and_real_samples():
    stats = {"layer": radar_stats(tokens=100, experts=4)}
    raw = stats["layer"].summary()
    first = summarize_routing(stats, max_points=50, seed=3)["layer"]["contrast"]
    again = summarize_routing(stats, max_points=50, seed=3)["layer"]["contrast"]
    other = summarize_routing(stats, max_points=50, seed=4)["layer"]["contrast"]
    assert first["points"] == again["points"]
    assert first["points"] != other["points"]
    assert first["n"] == min(400, SAMPLES_PER_CALL)  # one call keeps a random subset
    assert all(len(values) == 50 for values in first["points"].values())
    pairs = {(round(b, 5), round(a - b, 5)) for b, a in zip(raw["cos_before"], raw["cos_after"], strict=True)}
    chosen = zip(first["points"]["cos_before"], first["points"]["cos_change"], strict=True)
    assert all((b, c) in pairs for b, c in chosen)


def test_small_layers_keep_every_point_in_order():
    assert subsample(7, 10).tolist() == list(range(7))
    chosen = subsample(1000, 10, seed=1)
    assert len(set(chosen.tolist())) == 10 and chosen.tolist() == sorted(chosen.tolist())


def test_nan_samples_are_dropped_before_correlating():
    stats = radar_stats(tokens=30, experts=2)
    stats.samples["cos_after"][0][[0, 5, 7]] = math.nan
    stats.samples["theta"][0][11] = math.nan
    raw = stats.summary()
    keep = np.isfinite(raw["cos_after"]) & np.isfinite(raw["theta"])
    contrast = summarize_routing({"layer": stats})["layer"]["contrast"]
    before, after = np.asarray(raw["cos_before"])[keep], np.asarray(raw["cos_after"])[keep]
    assert contrast["n"] == 56
    assert contrast["spearman_cos_before_vs_change"] == pytest.approx(spearman(before, after - before))
    assert not any(math.isnan(value) for values in contrast["points"].values() for value in values)


def test_shuffled_baseline_equals_rho_when_every_angle_is_the_same():
    stats = radar_stats(tokens=60)
    stats.samples["theta"][0][:] = 0.7
    stats.samples["cos_after"][0] = torch.cos(torch.arccos(stats.samples["cos_before"][0]) - 0.7)
    contrast = summarize_routing({"layer": stats})["layer"]["contrast"]
    assert contrast["spearman_cos_before_vs_change"] < 0  # bounded cosines alone pull rho negative
    assert contrast["spearman_shuffled_theta_baseline"] == pytest.approx(contrast["spearman_cos_before_vs_change"])


def test_summarize_contrast_counts_signs_and_skips_undefined():
    def layer(rho: float | None, baseline: float | None) -> dict:
        return {"contrast": {"spearman_cos_before_vs_change": rho, "spearman_theta_vs_cos_before": 0.1,
                             "spearman_shuffled_theta_baseline": baseline, "n": 9}}

    routing = {"a": layer(0.5, -0.3), "b": layer(-0.2, -0.1), "c": layer(None, None), "plain": {"tokens": 3}}
    summary = summarize_contrast(routing)
    assert summary["layers"] == 3
    assert summary["mean_rho"] == pytest.approx(0.15)
    assert summary["mean_rho_shuffled_theta_baseline"] == pytest.approx(-0.2)
    assert (summary["positive"], summary["negative"], summary["undefined"]) == (1, 1, 1)
    assert [row["layer"] for row in summary["per_layer"]] == ["a", "b", "c"]


# -- a real tiny model ---------------------------------------------------------------------------


def test_summary_of_a_real_radar_model_is_complete_and_json_clean(generator):
    model = molora("llama", gate="radar")
    randomize_adapters(model, generator)
    ids = token_batch(batch=2, length=10)
    with model.record_routing() as stats, torch.no_grad():
        model(input_ids=ids)
    summary = summarize_routing(stats, max_points=25)
    assert set(summary) == set(stats) and len(summary) == 6
    for name, layer in summary.items():
        raw = stats[name].summary()
        assert layer["tokens"] == 20
        assert sum(layer["mean_weight"]) == pytest.approx(1.0)
        assert sum(layer["top_choice_share"]) == pytest.approx(1.0)
        assert layer["contrast"]["n"] == 60 <= MAX_SAMPLES
        assert -1 <= layer["contrast"]["spearman_cos_before_vs_change"] <= 1
        assert all(len(values) == 25 for values in layer["contrast"]["points"].values())
        # the shuffled baseline rests on this identity holding for the recorded samples
        predicted = np.cos(np.arccos(np.clip(raw["cos_before"], -1, 1)) - np.asarray(raw["theta"]))
        np.testing.assert_allclose(predicted, raw["cos_after"], atol=1e-4)
    json.dumps(summary, allow_nan=False)


def test_untrained_radar_model_gives_undefined_rho_not_a_crash():
    model = molora("llama", gate="radar")  # B = 0: every expert output and cosine is zero
    with model.record_routing() as stats, torch.no_grad():
        model(input_ids=token_batch())
    summary = summarize_routing(stats)
    assert all(layer["contrast"]["spearman_cos_before_vs_change"] is None for layer in summary.values())
    assert summarize_contrast(summary)["undefined"] == 6
    json.dumps(summary, allow_nan=False)
