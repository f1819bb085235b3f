"""The per-request sampling processors of `radargate serve`, on random logits (no server, no model)."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from radargate.serve.sampling import GREEDY, noise_key, request_kwargs, sampling_processors


def _arguments(temperature: list[float], top_p: list[float], keys: list[int]) -> torch.Tensor:
    """The int32 argument rows transformers hands the processors: floats viewed as int32, then the noise keys."""
    return torch.stack([torch.tensor(temperature, dtype=torch.float32).view(torch.int32),
                        torch.tensor(top_p, dtype=torch.float32).view(torch.int32),
                        torch.tensor(keys, dtype=torch.int32)])


def test_greedy_rows_keep_their_argmax_among_sampled_rows():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    processed = sampling_processors()(torch.zeros(3, dtype=torch.long), logits.clone(),
                                      _arguments([1.0, 0.7, 1.0], [1.0, 0.9, 1.0], [GREEDY, noise_key(3, 0), GREEDY]))
    torch.testing.assert_close(processed[[0, 2]], logits[[0, 2]])
    assert not torch.equal(processed[1], logits[1])


def test_top_p_rows_match_transformers_nucleus_filter():
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(1))
    processors = sampling_processors()
    processors.logits_processor = processors.logits_processor[:2]  # temperature and top-p, no noise
    processed = processors(torch.zeros(2, dtype=torch.long), logits.clone(),
                           _arguments([0.5, 1.0], [0.8, 1.0], [GREEDY, GREEDY])[:2])
    expected = TopPLogitsWarper(0.8)(None, logits[:1] / 0.5)
    assert torch.equal(processed[:1].isinf(), expected.isinf())
    torch.testing.assert_close(processed[:1][~expected.isinf()], expected[~expected.isinf()])
    torch.testing.assert_close(processed[1], logits[1])


def test_seeded_noise_samples_the_tempered_softmax():
    """argmax(logits / T + Gumbel(key)) over many keys: frequencies match softmax(logits / T)."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    temperature, draws = 0.8, 4000
    counts = torch.zeros(5)
    processors = sampling_processors()
    for step in range(draws):
        row = processors(torch.zeros(1, dtype=torch.long), logits.clone(),
                         _arguments([temperature], [1.0], [noise_key(11, step)]))
        counts[row.argmax()] += 1
    expected = (logits[0] / temperature).softmax(-1)
    assert (counts / draws - expected).abs().max() < 0.03


def test_a_key_depends_on_seed_and_step_only():
    assert noise_key(5, 3) == noise_key(5, 3)
    assert len({noise_key(5, 3), noise_key(5, 4), noise_key(6, 3)}) == 3
    assert all(0 <= noise_key(seed, step) < 2**31 for seed in (0, 2**62) for step in (0, 10**6))


@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_request_arguments_make_temperature_zero_greedy(temperature):
    arguments = request_kwargs(temperature, 0.9, 42)
    assert (arguments["seed"] == GREEDY) == (temperature == 0)
