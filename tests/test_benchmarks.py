"""The benchmark's naive baselines compute the same function as the radargate layers they are timed
against (float64), so the speed comparison is like for like."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def layer_speed():
    sys.path.insert(0, str(BENCHMARKS))  # as `python benchmarks/layer_speed.py` has it: its helper modules
    spec = importlib.util.spec_from_file_location("layer_speed", BENCHMARKS / "layer_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_into_baseline(layer, baseline) -> None:
    """The radargate layer's base, router and stacked experts into the per-expert modules."""
    with torch.no_grad():
        baseline.base.weight.copy_(layer.base_layer.weight)
        baseline.router.weight.copy_(layer.gate.router.weight)
        baseline.router.bias.copy_(layer.gate.router.bias)
        for i, (down, up) in enumerate(zip(baseline.down, baseline.up, strict=True)):
            down.weight.copy_(layer.experts.A[i])
            up.weight.copy_(layer.experts.B[i].T)
    baseline.scaling = layer.experts.scaling


@pytest.mark.parametrize(("gate", "baseline"), [("softmax", "loop"), ("topk", "topk_dispatch")])
def test_baselines_equal_the_radargate_layers(layer_speed, gate, baseline):
    torch.manual_seed(0)
    n, r, d_in, d_out = 8, 4, 16, 12
    layer = layer_speed.build(gate, d_in, d_out, n, r, "cpu", torch.float64)
    naive = layer_speed.build(baseline, d_in, d_out, n, r, "cpu", torch.float64)
    copy_into_baseline(layer, naive)
    x = torch.randn(40, d_in, dtype=torch.float64)
    expected = layer(x)
    assert (expected - layer.base_layer(x)).abs().max() > 1e-3  # the adapters do contribute
    torch.testing.assert_close(naive(x), expected, rtol=1e-12, atol=1e-12)


def test_layer_profile_keeps_each_ops_fastest_round_and_ranks_the_extra_time():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("layer_profile", BENCHMARKS / "layer_profile.py")
    profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile)
    mm, mul, sin = ("aten::mm", "[[4, 4]]"), ("aten::mul", "[[4]]"), ("aten::sin", "[[4]]")
    reference = profile.fastest([{mm: (2, 5.0), mul: (1, 0.3)}, {mm: (2, 4.0), mul: (1, 0.5)}])
    assert reference == {mm: (2, 4.0), mul: (1, 0.3)}  # a noisy round does not count against an op
    other = profile.fastest([{mm: (2, 4.5), mul: (3, 0.9), sin: (1, 0.2)}])
    rows = profile.compare(reference, other, top=2)
    assert [(row["op"], round(row["extra_ms"], 6)) for row in rows] == [("mul", 0.6), ("mm", 0.5)]
    only_in_other = next(row for row in profile.compare(reference, other, top=5) if row["op"] == "sin")
    assert only_in_other["calls_a"] == 0 and only_in_other["extra_ms"] == 0.2
