"""Auxiliary losses against closed forms, and their wiring into the model's loss."""

from __future__ import annotations

import pytest
import torch

from radargate.losses import load_balance_loss, orthogonality_loss, variance_loss, z_loss
from tests.conftest import molora, randomize_adapters, token_batch


def test_load_balance_is_one_when_balanced_and_n_when_collapsed():
    n = 4
    balanced = torch.full((8, n), 1.0 / n)
    selected = torch.eye(n).repeat(2, 1).bool()
    assert float(load_balance_loss(balanced, selected)) == pytest.approx(1.0)
    collapsed = torch.zeros(8, n)
    collapsed[:, 0] = 1.0
    assert float(load_balance_loss(collapsed, None)) == pytest.approx(n)


def test_load_balance_matches_switch_formula(generator):
    probs = torch.rand(10, 3, generator=generator, dtype=torch.float64).softmax(-1)
    top = probs.argmax(-1)
    fraction = torch.stack([(top == i).double().mean() for i in range(3)])
    expected = 3 * sum(fraction[i] * probs[:, i].mean() for i in range(3))
    assert float(load_balance_loss(probs, None)) == pytest.approx(float(expected), rel=1e-12)


def test_z_loss_is_mean_squared_logsumexp(generator):
    logits = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    expected = sum(float(torch.log(torch.exp(row).sum())) ** 2 for row in logits) / 7
    assert float(z_loss(logits)) == pytest.approx(expected, rel=1e-12)


def test_orthogonality_is_zero_for_orthogonal_and_one_for_parallel_outputs(generator):
    basis = torch.linalg.qr(torch.randn(6, 3, generator=generator, dtype=torch.float64)).Q.T  # 3 orthonormal rows
    orthogonal = basis.unsqueeze(0) * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64).view(1, 3, 1)
    parallel = basis[:1].repeat(3, 1).unsqueeze(0) * torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64).view(1, 3, 1)
    gram = lambda v: v @ v.transpose(-1, -2)  # noqa: E731
    assert float(orthogonality_loss(gram(orthogonal))) == pytest.approx(0.0, abs=1e-12)
    assert float(orthogonality_loss(gram(parallel))) == pytest.approx(1.0, rel=1e-9)


def test_variance_loss_rewards_token_dependent_routing():
    same_everywhere = torch.tensor([[0.7, 0.3]] * 4)
    discriminating = torch.tensor([[0.9, 0.1], [0.1, 0.9]] * 2)
    assert float(variance_loss(same_everywhere)) == pytest.approx(0.0)
    expected = -float(discriminating.var(dim=0).mean())
    assert float(variance_loss(discriminating)) == pytest.approx(expected)
    assert expected < 0


def test_model_loss_adds_weighted_auxiliary_losses_and_reports_them(generator):
    weights = {"load_balance_weight": 0.1, "z_loss_weight": 0.01, "orthogonality_weight": 0.2, "variance_weight": 0.3}
    model = molora("llama", gate="topk", top_k=2, **weights)
    randomize_adapters(model, generator, scale=0.1)
    ids = token_batch()
    output = model(input_ids=ids, labels=ids)
    aux = output["aux_losses"]
    assert set(aux) == {"load_balance", "z_loss", "orthogonality", "variance"}
    expected = output["lm_loss"] + sum(weights[f"{name}_weight"] * value for name, value in aux.items())
    torch.testing.assert_close(output.loss, expected)
    with torch.no_grad():
        plain = model.base_model(input_ids=ids, labels=ids).loss
    torch.testing.assert_close(output["lm_loss"], plain)
    assert float((output.loss - output["lm_loss"]).detach()) != 0.0


def test_no_labels_no_auxiliary_losses():
    model = molora("gpt2", gate="softmax", load_balance_weight=0.5)
    output = model(input_ids=token_batch())
    assert output.loss is None and "aux_losses" not in output


def test_uniform_gate_has_no_router_losses_but_orthogonality():
    model = molora("llama", gate="uniform", load_balance_weight=1.0, orthogonality_weight=1.0)
    output = model(input_ids=token_batch(), labels=token_batch())
    assert set(output["aux_losses"]) == {"orthogonality"}
