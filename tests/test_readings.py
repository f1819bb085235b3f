"""The other readings of RadarGate (sparse, input-dependent fusion, unnormalised stretch) and the signed gate:
each reading with zero angles is exactly its own weighted sum, and the signed gate leaves the convex cone."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from radargate import MoLoRAConfig
from radargate.stats import RoutingStats
from tests.layer_helpers import copy_adapters, make_layer, random_input
from tests.test_radar import fit


def _zero_angles(layer) -> None:
    with torch.no_grad():
        layer.gate.angle.weight.zero_()
        layer.gate.angle.bias.zero_()


def _float64_mixture(layer, x, coefficients) -> torch.Tensor:
    """``x W0 + sum_i c_i v_i`` by a loop over experts, the reference every gate is checked against."""
    codes = layer.experts.codes(x)
    outputs = layer.experts.outputs(codes)
    return layer.base_layer(x) + sum(coefficients[:, i : i + 1] * outputs[:, i] for i in range(outputs.shape[1]))


@pytest.mark.parametrize("impl", ["span", "materialized"])
def test_sparse_reading_with_zero_angles_is_the_topk_gate(generator, impl):
    radar = make_layer(generator, gate="radar", stretch="topk", top_k=2, radar_impl=impl)
    topk = make_layer(generator, gate="topk", top_k=2)
    copy_adapters(radar, topk)
    _zero_angles(radar)
    x = random_input(generator, 20, 10)
    torch.testing.assert_close(radar(x), topk(x), rtol=1e-12, atol=1e-12)
    output = radar.gate(x, radar.experts.codes(x), radar.experts)
    assert torch.equal(output.selected.sum(-1), torch.full((20,), 2))  # two experts per token, as top-k


@pytest.mark.parametrize("impl", ["span", "materialized"])
def test_input_fusion_with_zero_angles_is_the_softmax_gate(generator, impl):
    """The fusion only chooses the plane of rotation: without rotation, any fusion gives the plain sum."""
    radar = make_layer(generator, gate="radar", fusion="input", radar_impl=impl)
    softmax = make_layer(generator, gate="softmax")
    copy_adapters(radar, softmax)
    _zero_angles(radar)
    assert radar.gate.fusion_from_codes.weight.norm() > 0  # a random, input-dependent fusion
    x = random_input(generator, 20, 10)
    torch.testing.assert_close(radar(x), softmax(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["span", "materialized"])
def test_softplus_reading_with_zero_angles_is_the_softplus_weighted_sum(generator, impl):
    radar = make_layer(generator, gate="radar", stretch="softplus", radar_impl=impl)
    _zero_angles(radar)
    x = random_input(generator, 20, 10)
    expected = _float64_mixture(radar, x, F.softplus(radar.gate.router(x)))
    torch.testing.assert_close(radar(x), expected, rtol=1e-12, atol=1e-12)


def test_input_fusion_is_per_token_and_starts_as_the_static_fusion(generator):
    fresh = make_layer(generator, gate="radar", fusion="input", randomize=False)
    static = make_layer(generator, gate="radar", randomize=False)
    static.load_state_dict(fresh.state_dict(), strict=False)
    x = random_input(generator, 6, 10)
    codes = fresh.experts.codes(x)
    torch.testing.assert_close(fresh.gate.fusion(codes), static.gate.fusion().expand(6, 4, 4), rtol=0, atol=0)
    trained = make_layer(generator, gate="radar", fusion="input")
    phi = trained.gate.fusion(trained.experts.codes(x))
    assert phi.shape == (6, 4, 4) and (phi[0] - phi[1]).abs().max() > 1e-3  # it varies with the token
    torch.testing.assert_close(phi.sum(-1), torch.ones(6, 4, dtype=phi.dtype))
    assert torch.equal(torch.diagonal(phi, dim1=-2, dim2=-1), torch.zeros(6, 4, dtype=phi.dtype))


def test_sparse_reading_refuses_more_experts_kept_than_there_are():
    with pytest.raises(ValueError, match="top_k=3 is larger than num_experts=2"):
        MoLoRAConfig(gate="radar", stretch="topk", num_experts=2, top_k=3)
    MoLoRAConfig(gate="radar", stretch="softmax", num_experts=2, top_k=3)  # top_k only matters to the top-k stretch


def test_signed_gate_equals_a_float64_loop_with_its_signed_coefficients(generator):
    layer = make_layer(generator, gate="signed")
    x = random_input(generator, 15, 10)
    coefficients = layer.gate.coefficients(x)
    assert (coefficients < 0).any() and (coefficients > 0).any()  # no sign constraint, no normalisation
    torch.testing.assert_close(layer(x), _float64_mixture(layer, x, coefficients), rtol=1e-12, atol=1e-12)


def test_signed_gate_starts_as_the_uniform_average(generator):
    signed = make_layer(generator, gate="signed", randomize=False)
    uniform = make_layer(generator, gate="uniform", randomize=False)
    with torch.no_grad():
        for layer in (signed, uniform):
            layer.experts.B.normal_(generator=generator)  # nonzero outputs, so the average shows
    uniform.load_state_dict(signed.state_dict(), strict=False)
    x = random_input(generator, 9, 10)
    torch.testing.assert_close(signed(x), uniform(x), rtol=1e-12, atol=1e-12)


def _gradients(layer, x) -> dict[str, torch.Tensor]:
    layer.zero_grad()
    (layer(x) * torch.linspace(-1, 1, 9 * 7, dtype=x.dtype).view(9, 7)).sum().backward()
    return {name: p.grad.clone() for name, p in layer.named_parameters() if p.grad is not None}


def test_signed_gate_leaves_the_zero_saddle_and_trains_both_parts(generator):
    """All-zero coefficients with B = 0 is a saddle (neither gets a gradient); the uniform start is not: the
    first step moves the experts, and from the second the gate's coefficients move too."""
    x = random_input(generator, 9, 10)
    saddle = make_layer(generator, gate="signed", randomize=False)
    with torch.no_grad():
        saddle.gate.coefficients.bias.zero_()
    grads = _gradients(saddle, x)
    assert grads["experts.B"].norm() == 0 and grads["gate.coefficients.weight"].norm() == 0

    layer = make_layer(generator, gate="signed", randomize=False)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    first = _gradients(layer, x)
    assert first["experts.B"].norm() > 0
    optimizer.step()
    second = _gradients(layer, x)
    assert second["gate.coefficients.weight"].norm() > 0 and second["gate.coefficients.bias"].norm() > 0


def test_signed_gate_fits_a_target_outside_the_convex_cone(generator):
    """``2 v_1 - v_2`` is no weighted sum of the two fixed expert outputs; the signed gate reaches it."""
    layers = {}
    for gate in ("softmax", "signed"):
        layers[gate] = make_layer(generator, gate=gate, num_experts=2, r=2, d_in=6, d_out=5)
        layers[gate].experts.requires_grad_(False)
        layers[gate].base_layer.requires_grad_(False)  # the target is linear in x: a trained base would fit it
        with torch.no_grad():
            layers[gate].base_layer.weight.zero_()
            layers[gate].base_layer.bias.zero_()
    layers["signed"].experts.load_state_dict(layers["softmax"].experts.state_dict())
    x = random_input(generator, 64, 6)
    with torch.no_grad():
        outputs = layers["signed"].experts.outputs(layers["signed"].experts.codes(x))
        target = 2 * outputs[:, 0] - outputs[:, 1]
    losses = {gate: fit(layer, x, target) for gate, layer in layers.items()}
    scale = float(target.pow(2).mean())
    assert losses["signed"] < 0.01 * scale, f"signed {losses['signed']:.4g} (target {scale:.4g})"
    assert losses["softmax"] > 0.05 * scale, f"softmax {losses['softmax']:.4g} should stay far"


def test_routing_statistics_of_signed_coefficients_are_shares_of_magnitude(generator):
    layer = make_layer(generator, gate="signed")
    x = random_input(generator, 30, 10)
    stats = RoutingStats(num_experts=4)
    stats.update(layer.gate(x, layer.experts.codes(x), layer.experts))
    summary = stats.summary()
    assert 0 <= summary["mean_entropy"] <= math.log(4) + 1e-9
    assert math.isclose(sum(summary["top_choice_share"]), 1.0)
