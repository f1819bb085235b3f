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
