"""The weighted-sum gates against independent float64 per-expert loops, and against PEFT's LoRA."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from radargate import GATES, MoLoRAConfig, get_molora_model
from radargate.layer import MoLoRALinear
from radargate.stats import RoutingStats
from tests.conftest import TARGETS, TINY_MODELS, randomize_adapters, token_batch
from tests.layer_helpers import copy_adapters, make_layer, random_input


def expert_outputs_loop(layer: MoLoRALinear, x: torch.Tensor) -> list[torch.Tensor]:
    """``v_i = s * (x A_i^T) B_i``, one expert at a time."""
    experts = layer.experts
    return [experts.scaling * (x @ experts.A[i].T) @ experts.B[i] for i in range(experts.num_experts)]


def router_probs(layer: MoLoRALinear, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x @ layer.gate.router.weight.T + layer.gate.router.bias, dim=-1)


def test_softmax_gate_equals_float64_loop(generator):
    layer = make_layer(generator, gate="softmax")
    x = random_input(generator, 2, 5, 10)
    probs = router_probs(layer, x)
    expected = layer.base_layer(x) + sum(
        probs[..., i : i + 1] * v for i, v in enumerate(expert_outputs_loop(layer, x))
    )
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("top_k", [1, 2, 3])
@pytest.mark.parametrize("renormalize", [True, False])
def test_topk_gate_equals_per_token_loop(generator, top_k, renormalize):
    layer = make_layer(generator, gate="topk", top_k=top_k, topk_renormalize=renormalize)
    x = random_input(generator, 9, 10)
    probs, outputs = router_probs(layer, x), expert_outputs_loop(layer, x)
    expected = layer.base_layer(x).clone()
    for t in range(x.shape[0]):
        kept = sorted(range(4), key=lambda i: -probs[t, i])[:top_k]
        total = sum(probs[t, i] for i in kept) if renormalize else 1.0
        for i in kept:
            expected[t] += probs[t, i] / total * outputs[i][t]
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_topk_with_all_experts_equals_softmax(generator):
    topk = make_layer(generator, gate="topk", top_k=4)
    softmax = make_layer(generator, gate="softmax")
    copy_adapters(topk, softmax)
    x = random_input(generator, 6, 10)
    torch.testing.assert_close(topk(x), softmax(x), rtol=1e-12, atol=1e-12)


def test_uniform_gate_averages_experts(generator):
    layer = make_layer(generator, gate="uniform")
    x = random_input(generator, 6, 10)
    expected = layer.base_layer(x) + sum(expert_outputs_loop(layer, x)) / 4
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_gram_matrix_equals_inner_products_of_outputs(generator):
    layer = make_layer(generator)
    x = random_input(generator, 5, 10)
    outputs = torch.stack(expert_outputs_loop(layer, x), dim=1)
    expected = torch.einsum("tid,tjd->tij", outputs, outputs)
    torch.testing.assert_close(layer.experts.gram(layer.experts.codes(x)), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_single_expert_softmax_equals_peft_lora(kind):
    """n=1 with the softmax gate is a plain LoRA: compare with PEFT's layer on the same A, B."""
    torch.manual_seed(0)
    base = TINY_MODELS[kind]().eval()
    peft_model = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[kind], init_lora_weights=False,
                   fan_in_fan_out=kind == "gpt2"),  # GPT-2's Conv1D stores its weight transposed
    )
    ours = get_molora_model(
        copy.deepcopy(base), MoLoRAConfig(num_experts=1, r=4, alpha=8, target_modules=TARGETS[kind])
    ).eval()
    with torch.no_grad():
        for name, layer in ours.molora_layers.items():
            lora = peft_model.base_model.model.get_submodule(name)
            layer.experts.A[0].copy_(lora.lora_A["default"].weight)
            layer.experts.B[0].copy_(lora.lora_B["default"].weight.T)
    ids = token_batch()
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        actual = ours(input_ids=ids).logits
        plain = base(input_ids=ids).logits
    assert (expected - plain).abs().max() > 1e-3, "the LoRA must change the output for this test to mean anything"
    assert (actual - expected).abs().max() < 1e-5


def test_every_registered_gate_runs_and_reports_weights(generator):
    for name in GATES:
        layer = make_layer(generator, gate=name)
        x = random_input(generator, 3, 10)
        output = layer.gate(x, layer.experts.codes(x), layer.experts)
        assert output.delta.shape == (3, 7)
        assert output.weights.shape == (3, 4)
        assert torch.isfinite(output.delta).all()


@pytest.mark.parametrize("settings", [*({"gate": name} for name in GATES),
                                      {"gate": "radar", "stretch": "topk"}, {"gate": "radar", "fusion": "input"},
                                      {"gate": "radar", "radar_impl": "materialized"}])
@pytest.mark.parametrize("grad", [False, True])
def test_every_gate_takes_a_batch_without_tokens(generator, settings, grad):
    """A batch of empty contexts has no tokens at all (evaluation sorts contexts by length, so they come together)."""
    layer = make_layer(generator, **settings)
    layer.routing_stats = RoutingStats(4)
    x = torch.zeros(2, 0, 10, dtype=torch.float64, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        y = layer(x)
    assert y.shape == (2, 0, 7)
    if grad:
        y.sum().backward()
        assert x.grad.shape == x.shape


def test_gate_parameters_train_with_frozen_experts(generator):
    model = get_molora_model(TINY_MODELS["llama"](), MoLoRAConfig(gate="radar", train_experts=False))
    randomize_adapters(model, generator, scale=0.1)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".gate." in name for name in trainable)


@pytest.mark.parametrize("chunk_tokens", [None, 2])
def test_block_gram_gradients_pass_gradcheck(generator, monkeypatch, chunk_tokens):
    """One pass over all tokens, and token chunks of 2 (the last one ragged): forward against the
    einsum formula, gradients against finite differences."""
    import radargate.experts as experts

    tokens, n, r = 5, 3, 2
    if chunk_tokens is not None:
        monkeypatch.setattr(experts, "GRAM_CHUNK_ELEMENTS", chunk_tokens * n * n * r)
    assert len(experts.token_chunks(tokens, n * n * r)) == (3 if chunk_tokens else 1)
    codes = torch.randn(tokens, n, r, generator=generator, dtype=torch.float64, requires_grad=True)
    b_flat = torch.randn(n * r, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    blocks = (b_flat @ b_flat.T).view(n, r, n, r)
    expected = torch.einsum("tia,iajb,tjb->tij", codes, blocks, codes)
    torch.testing.assert_close(experts.BlockGram.apply(codes, b_flat), expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(experts.BlockGram.apply, (codes, b_flat))
