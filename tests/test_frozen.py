"""Weight-derived tensors reused without autograd (generation) must never go stale."""

from __future__ import annotations

import copy

import pytest
import torch

from radargate.frozen import FrozenCache
from tests.conftest import molora, randomize_adapters
from tests.layer_helpers import make_layer, random_input


def test_frozen_cache_recomputes_exactly_when_its_source_changes():
    source = torch.ones(3)
    calls = []

    def compute():
        calls.append(1)
        return source * 2

    cache = FrozenCache()
    with torch.no_grad():
        first = cache.get("double", compute, source)
        assert cache.get("double", compute, source) is first and len(calls) == 1
        source.add_(1.0)  # an optimizer step is an in-place update
        assert torch.equal(cache.get("double", compute, source), torch.full((3,), 4.0)) and len(calls) == 2
    cache.get("double", compute, source)  # with autograd on, never from the cache
    assert len(calls) == 3


def test_a_write_that_leaves_the_version_counter_alone_is_seen(generator):
    """``param.data`` writes (and FSDP2's all-gather into reused storage) keep the storage address and the
    version counter: the cache compares values, so it recomputes."""
    layer = make_layer(generator, gate="radar")
    x = random_input(generator, 4, 10)
    with torch.no_grad():
        layer(x)  # fills the cache
        version = layer.experts.B._version, layer.gate.fusion_logits._version
        layer.experts.B.data.copy_(torch.randn(layer.experts.B.shape, generator=generator, dtype=torch.float64))
        layer.gate.fusion_logits.data.copy_(torch.randn(layer.gate.fusion_logits.shape, generator=generator,
                                                        dtype=torch.float64))
        assert (layer.experts.B._version, layer.gate.fusion_logits._version) == version
        cached = layer(x)
    torch.testing.assert_close(cached, layer(x).detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gate", ["radar", "softmax"])
def test_layer_without_autograd_equals_layer_with_it_across_weight_updates(generator, gate):
    layer = make_layer(generator, gate=gate)
    x = random_input(generator, 3, 5, 10)
    optimizer = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        with torch.inference_mode():
            cached = layer(x)
        reference = layer(x)
        torch.testing.assert_close(cached, reference.detach(), rtol=1e-12, atol=1e-12)
        reference.pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    other = make_layer(generator, gate=gate)
    with torch.no_grad():
        layer(x)
        layer.load_state_dict(other.state_dict())  # in-place copies: new values, same storage
        torch.testing.assert_close(layer(x), other(x), rtol=1e-12, atol=1e-12)


def test_a_copied_or_converted_layer_does_not_reuse_the_original_cache(generator):
    layer = make_layer(generator, gate="radar")
    x = random_input(generator, 4, 10)
    with torch.no_grad():
        original = layer(x)  # fills the cache
        twin = copy.deepcopy(layer)
        twin.experts.B.mul_(3.0)
        twin.gate.fusion_logits.add_(1.0)
        changed = twin(x)
        as_float32 = copy.deepcopy(layer).float()
        converted = as_float32(x.float())
    torch.testing.assert_close(changed, twin(x).detach(), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(changed, original)
    torch.testing.assert_close(converted, original.float(), rtol=1e-5, atol=1e-5)


def test_weights_fixed_reuses_the_cache_without_comparing_and_only_inside_the_block(generator):
    """The promise a server makes: inside ``weights_fixed`` a changed ``B`` is not looked at (nothing may change
    it there); outside, the cache sees the change again."""
    model = molora("llama", gate="radar")
    randomize_adapters(model, generator, scale=0.2)
    experts = next(iter(model.molora_layers.values())).experts
    with torch.no_grad():
        with model.weights_fixed():
            blocks = experts.frozen_blocks(torch.float32)
            experts.B.mul_(2.0)
            assert experts.frozen_blocks(torch.float32) is blocks
        torch.testing.assert_close(experts.frozen_blocks(torch.float32), 4 * blocks)
