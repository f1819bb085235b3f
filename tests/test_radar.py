"""RadarGate: the properties the project's spec pins down."""

from __future__ import annotations

import copy
import math
from unittest import mock

import pytest
import torch

from radargate.gates import radar, radar_decoding
from radargate.gates.radar import SpanCoefficients, _span_coefficients, rotate_outputs
from tests.layer_helpers import copy_adapters, make_layer, random_input


def random_fusion(generator: torch.Generator, n: int) -> torch.Tensor:
    logits = torch.randn(n, n, generator=generator, dtype=torch.float64)
    logits.fill_diagonal_(-math.inf)
    return logits.softmax(-1)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def forward_and_gradients(layer, x):
    x = x.clone().requires_grad_(True)
    output = layer(x)
    target = torch.linspace(-1, 1, output.numel(), dtype=output.dtype).view_as(output)
    (output * target).sum().backward()
    grads = {name: p.grad.clone() for name, p in layer.named_parameters() if p.grad is not None}
    grads["input"] = x.grad.clone()
    return output.detach(), grads


READINGS = [  # every reading of the abstract the gate offers (docs/radargate.md), as adapter settings
    {"stretch": "softmax"}, {"stretch": "softplus"}, {"stretch": "topk"}, {"fusion": "input"},
    {"stretch": "topk", "fusion": "input"},
]


@pytest.mark.parametrize("reading", READINGS, ids=lambda r: "-".join(r.values()))
@pytest.mark.parametrize("num_experts", [1, 2, 5])
@pytest.mark.parametrize("recompute", [True, False])
def test_span_space_equals_materialized_in_float64(generator, reading, num_experts, recompute):
    reading = {"top_k": min(2, num_experts), **reading}
    span = make_layer(
        generator, gate="radar", num_experts=num_experts, radar_impl="span", radar_recompute=recompute, **reading
    )
    materialized = make_layer(generator, gate="radar", num_experts=num_experts, radar_impl="materialized", **reading)
    materialized.load_state_dict(span.state_dict())
    x = random_input(generator, 3, 11, 10)
    out_span, grads_span = forward_and_gradients(span, x)
    out_ref, grads_ref = forward_and_gradients(materialized, x)
    assert relative_error(out_span, out_ref) < 1e-10
    assert grads_span.keys() == grads_ref.keys()
    for name, grad in grads_ref.items():
        if grad.norm() > 0:
            assert relative_error(grads_span[name], grad) < 1e-10, name
        else:
            assert grads_span[name].norm() == 0, name
    assert grads_ref["gate.angle.weight"].norm() > 0, "the angles must receive gradients"


@pytest.mark.parametrize("reading", READINGS, ids=lambda r: "-".join(r.values()))
@pytest.mark.parametrize(("tokens", "num_experts"), [(0, 4), (1, 4), (3, 4), (radar.DECODE_TOKENS, 4),
                                                     (radar.DECODE_TOKENS + 1, 4), (3, 1)])
def test_decoding_equals_the_reference(generator, monkeypatch, reading, tokens, num_experts):
    """A few tokens without autograd take the compiled decoding path (``radar_decoding.py``): float64 against the
    materialised reference, float32 against the torch path, outputs, weights and angles alike; more tokens,
    autograd, the geometry statistics or a missing numba stay in torch. A single expert too (no fusion at all)."""
    reading = {**reading, "num_experts": num_experts, "top_k": min(2, num_experts)}
    calls = []
    decoding = radar._decoding
    monkeypatch.setattr(radar, "_decoding", lambda codes: calls.append(decoding(codes)) or calls[-1])
    span = make_layer(generator, gate="radar", **reading)
    materialized = make_layer(generator, gate="radar", radar_impl="materialized", **reading)
    materialized.load_state_dict(span.state_dict())
    x = random_input(generator, tokens, 10)
    with torch.no_grad():
        codes = span.experts.codes(x)
        ours = span.gate(x, codes, span.experts)
        reference = materialized.gate(x, codes, materialized.experts)
        span.gate(x, codes, span.experts, with_stats=True)
    assert calls == [tokens <= radar.DECODE_TOKENS]  # with statistics, no decoding path is even asked for
    torch.testing.assert_close(ours.delta, reference.delta, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.weights, reference.weights, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours.extras["theta"], reference.extras["theta"], rtol=1e-10, atol=1e-12)
    single = make_layer(generator, gate="radar", dtype=torch.float32, **reading)
    x = x.float()
    with torch.no_grad():
        decoded = single(x)
        monkeypatch.setattr(radar, "_decoding", lambda codes: False)
        torch.testing.assert_close(decoded, single(x), rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(radar, "_decoding", decoding)
    with torch.enable_grad():
        assert not decoding(single.experts.codes(x))  # autograd needs torch
    monkeypatch.setattr(radar_decoding, "kernel", lambda: None)
    with torch.no_grad():
        assert not decoding(single.experts.codes(x[:1]))  # no numba: torch


def test_decoding_reuses_weights_only_while_they_are_unchanged(generator):
    """The decoding path caches the router, angle and expert weights as arrays: a change of any of them after a
    call must show in the next call, as in the torch path."""
    layer = make_layer(generator, gate="radar", dtype=torch.float32)
    x = random_input(generator, 2, 10).float()
    for parameter in (layer.gate.router.weight, layer.gate.angle.bias, layer.experts.B, layer.gate.fusion_logits):
        with torch.no_grad():
            layer(x)
            parameter.add_(0.3)
            decoded = layer(x)
            with mock.patch.object(radar, "_decoding", lambda codes: False):
                torch.testing.assert_close(decoded, layer(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["span", "materialized"])
def test_zero_angles_give_the_softmax_gate(generator, impl):
    radar = make_layer(generator, gate="radar", radar_impl=impl)
    softmax = make_layer(generator, gate="softmax")
    copy_adapters(radar, softmax)
    with torch.no_grad():
        radar.gate.angle.weight.zero_()
        radar.gate.angle.bias.zero_()
    x = random_input(generator, 20, 10)
    if impl == "span":
        assert torch.equal(radar(x), softmax(x))
    else:
        torch.testing.assert_close(radar(x), softmax(x), rtol=1e-13, atol=1e-13)


def test_rotation_preserves_norms_and_turns_by_theta_in_the_plane(generator):
    tokens, n, d = 50, 4, 16
    outputs = random_input(generator, tokens, n, d)
    phi = random_fusion(generator, n)
    theta = (torch.rand(tokens, n, generator=generator, dtype=torch.float64) - 0.5) * 0.98 * math.pi
    rotated, _ = rotate_outputs(outputs, phi, theta)
    torch.testing.assert_close(rotated.norm(dim=-1), outputs.norm(dim=-1), rtol=1e-9, atol=0)
    # the angle between v and v' is |theta| (independently, through arccos)
    cos_turn = (rotated * outputs).sum(-1) / outputs.norm(dim=-1) ** 2
    torch.testing.assert_close(torch.arccos(cos_turn.clamp(-1, 1)), theta.abs(), rtol=1e-5, atol=1e-6)
    # v' stays in the plane of v and its partner, and positive angles turn towards the partner
    partners = torch.einsum("ij,tjd->tid", phi, outputs)
    plane = torch.stack([outputs, partners], dim=-1)  # [T, n, d, 2]
    coefficients = torch.linalg.lstsq(plane, rotated.unsqueeze(-1)).solution
    residual = (plane @ coefficients).squeeze(-1) - rotated
    assert residual.norm() / rotated.norm() < 1e-10

    def cosine(a, b):
        return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))

    closer = cosine(rotated, partners) > cosine(outputs, partners)
    assert torch.equal(closer, theta > 0)


def test_degenerate_plane_gives_the_identity(generator):
    """Two parallel experts: the partner spans no plane, so nothing rotates."""
    outputs = random_input(generator, 30, 1, 8) * torch.tensor([1.0, -2.5], dtype=torch.float64).view(1, 2, 1)
    phi = random_fusion(generator, 2)
    theta = torch.full((30, 2), 1.2, dtype=torch.float64)
    rotated, _ = rotate_outputs(outputs, phi, theta)
    torch.testing.assert_close(rotated, outputs, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("reading", READINGS, ids=lambda r: "-".join(r.values()))
@pytest.mark.parametrize("impl", ["span", "materialized"])
def test_gradients_finite_at_initialisation(generator, impl, reading):
    layer = make_layer(generator, gate="radar", radar_impl=impl, randomize=False, **reading)
    with torch.no_grad():  # nonzero angles too: B = 0 must not break them
        layer.gate.angle.bias.fill_(0.7)
        layer.gate.fusion_logits.normal_(generator=generator)
        if layer.gate.fusion_from_codes is not None:
            layer.gate.fusion_from_codes.weight.normal_(generator=generator)
    assert torch.count_nonzero(layer.experts.B) == 0
    _, grads = forward_and_gradients(layer, random_input(generator, 6, 10))
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert grads["experts.B"].norm() > 0


@pytest.mark.parametrize("reading", READINGS, ids=lambda r: "-".join(r.values()))
@pytest.mark.parametrize("impl", ["span", "materialized"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_finite_with_parallel_experts(generator, impl, dtype, reading):
    layer = make_layer(generator, gate="radar", radar_impl=impl, num_experts=2, dtype=dtype, **reading)
    with torch.no_grad():
        layer.experts.A[1].copy_(layer.experts.A[0])
        layer.experts.B[1].copy_(-3 * layer.experts.B[0])
    _, grads = forward_and_gradients(layer, random_input(generator, 6, 10, dtype=dtype))
    assert all(torch.isfinite(g).all() for g in grads.values())


def fit(layer, x, target, steps=300, lr=0.05) -> float:
    optimizer = torch.optim.Adam([p for p in layer.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = (layer(x) - target).pow(2).mean()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float((layer(x) - target).pow(2).mean())


def test_radar_fits_a_target_outside_the_convex_cone(generator):
    """Targets turned 60 degrees away from the other expert lie outside the cone of the fixed
    expert outputs: no weighted sum reaches them, a rotation does."""
    layers = {}
    for gate in ("softmax", "radar"):
        layers[gate] = make_layer(generator, gate=gate, num_experts=2, r=2, d_in=6, d_out=5)
        layers[gate].experts.requires_grad_(False)
        with torch.no_grad():
            layers[gate].base_layer.weight.zero_()
            layers[gate].base_layer.bias.zero_()
    copy_adapters(layers["radar"], layers["softmax"])
    x = random_input(generator, 64, 6)
    with torch.no_grad():
        outputs = layers["radar"].experts.outputs(layers["radar"].experts.codes(x))
        v1, v2 = outputs[:, 0], outputs[:, 1]
        away = v2 - (v2 * v1).sum(-1, keepdim=True) / v1.norm(dim=-1, keepdim=True) ** 2 * v1
        away = -away / away.norm(dim=-1, keepdim=True)
        target = math.cos(math.pi / 3) * v1 + math.sin(math.pi / 3) * v1.norm(dim=-1, keepdim=True) * away
    losses = {gate: fit(layer, x, target) for gate, layer in layers.items()}
    scale = float(target.pow(2).mean())
    assert losses["radar"] < 0.1 * losses["softmax"], f"radar {losses['radar']:.4g} vs softmax {losses['softmax']:.4g}"
    assert losses["softmax"] > 0.05 * scale, f"softmax {losses['softmax']:.4g} should stay far (target {scale:.4g})"


def test_recorded_cosines_match_the_rotated_outputs(generator):
    layer = make_layer(generator, gate="radar", radar_impl="span")
    x = random_input(generator, 12, 10)
    codes = layer.experts.codes(x)
    stats = layer.gate(x, codes, layer.experts, with_stats=True).extras
    outputs = layer.experts.outputs(codes)
    phi = layer.gate.fusion()
    rotated, _ = rotate_outputs(outputs, phi, stats["theta"])
    partners = torch.einsum("ij,tjd->tid", phi, outputs)

    def cosine(a, b):
        return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))

    torch.testing.assert_close(stats["cos_before"], cosine(outputs, partners), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(stats["cos_after"], cosine(rotated, partners), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gate", ["radar", "topk"])
def test_compiled_layer_equals_eager(generator, gate):
    """The fast paths under torch.compile compute the same function and gradients (float32)."""
    eager = make_layer(generator, gate=gate, dtype=torch.float32)
    compiled = make_layer(generator, gate=gate, dtype=torch.float32)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile(dynamic=True)
    for tokens in (7, 13):  # two sizes: dynamic shapes must not recompile into a wrong result
        x = random_input(generator, tokens, 10, dtype=torch.float32)
        out_eager, grads_eager = forward_and_gradients(eager, x)
        out_compiled, grads_compiled = forward_and_gradients(compiled, x)
        torch.testing.assert_close(out_compiled, out_eager, rtol=1e-4, atol=1e-5)
        for name, grad in grads_eager.items():
            torch.testing.assert_close(grads_compiled[name], grad, rtol=1e-4, atol=1e-5, msg=name)
        eager.zero_grad()
        compiled.zero_grad()


@pytest.mark.parametrize("recompute", [True, False])
def test_radar_trains_under_bfloat16_autocast(generator, recompute):
    """Forward under autocast, backward outside it, as accelerate and AMP run them."""
    layer = make_layer(generator, gate="radar", dtype=torch.float32, radar_recompute=recompute)
    reference = copy.deepcopy(layer)
    x = random_input(generator, 9, 10, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = layer(x)
    output.float().pow(2).sum().backward()
    grads = [p.grad for p in layer.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert layer.experts.B.grad.norm() > 0
    assert relative_error(output.detach().float(), reference(x).detach()) < 2e-2  # bf16 matmuls


def _coefficient_inputs(generator, *, tokens=5, n=4, gram="random", per_token_fusion=False):
    """Float64 inputs of the coefficient math: a Gram matrix of real expert outputs (or a degenerate one),
    weights, a fusion matrix and angles, all requiring grad."""
    outputs = torch.randn(tokens, n, 6, generator=generator, dtype=torch.float64)
    if gram == "zero":  # all B = 0: every expert output vanishes
        outputs = torch.zeros_like(outputs)
    elif gram == "parallel":  # every expert output on one line per token: no plane to rotate in
        outputs = torch.randn(tokens, n, 1, generator=generator, dtype=torch.float64) * outputs[:, :1, :]
    gram_matrix = outputs @ outputs.transpose(-1, -2)
    weights = torch.rand(tokens, n, generator=generator, dtype=torch.float64).softmax(-1)
    theta = (torch.rand(tokens, n, generator=generator, dtype=torch.float64) - 0.5) * 2.0
    fusion = random_fusion(generator, n) if n > 1 else torch.zeros(1, 1, dtype=torch.float64)  # as the gate's
    if per_token_fusion:  # the input-dependent reading: one fusion matrix per token
        fusion = torch.stack([random_fusion(generator, n) if n > 1 else fusion for _ in range(tokens)])
    tensors = (gram_matrix, weights, fusion, theta)
    return tuple(t.clone().requires_grad_(True) for t in tensors)


@pytest.mark.parametrize("per_token_fusion", [False, True])
def test_hand_written_coefficient_backward_passes_gradcheck_in_float64(generator, per_token_fusion):
    # at a proper plane only: in the degenerate cases the function bends on the scale of TAU (1e-12),
    # far below gradcheck's finite-difference step, so there the test below compares with autograd instead
    inputs = _coefficient_inputs(generator, per_token_fusion=per_token_fusion)
    assert torch.autograd.gradcheck(lambda *x: SpanCoefficients.apply(*x)[0], inputs)


@pytest.mark.parametrize("per_token_fusion", [False, True])
@pytest.mark.parametrize("gram", ["random", "zero", "parallel"])
@pytest.mark.parametrize("n", [1, 2, 7])
def test_hand_written_coefficient_backward_equals_autograd_of_the_forward(generator, gram, n, per_token_fusion):
    inputs = _coefficient_inputs(generator, n=n, gram=gram, per_token_fusion=per_token_fusion)
    upstream = torch.randn(5, n, generator=generator, dtype=torch.float64)
    fused, *fused_geometry = SpanCoefficients.apply(*inputs)
    fused_grads = torch.autograd.grad(fused, inputs, upstream)
    plain, *plain_geometry = _span_coefficients(*inputs)
    plain_grads = torch.autograd.grad(plain, inputs, upstream)
    torch.testing.assert_close(fused, plain, rtol=0, atol=0)
    # degenerate planes (and a single expert, which has no partner) are ill-conditioned (derivatives up to
    # ~1e9 here, and autograd sums -2 a + 2 kappa q term by term where they cancel), so there both sides
    # agree to 1e-4 of the largest gradient: a wrong term in the chain rule would be off by order one
    rtol = 1e-10 if gram == "random" and n > 1 else 1e-4
    for ours, reference in zip([*fused_grads, *fused_geometry], [*plain_grads, *plain_geometry], strict=True):
        scale = 1 + float(reference.detach().abs().max())
        torch.testing.assert_close(ours, reference, rtol=rtol, atol=rtol * scale)
