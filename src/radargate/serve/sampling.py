"""Per-request sampling inside transformers' continuous batching, reproducible whatever the batch.

transformers' continuous batching samples with one global random generator (``torch.multinomial``), so a
request's ``seed`` could not make its own tokens reproducible while other requests share the batch. Here the
batch is decoded by ``argmax`` (``do_sample=False``) after three per-request logits processors: transformers' own
temperature and top-p warpers, then :class:`SeededGumbelNoise`, which adds Gumbel noise drawn from the request's
seed and the token's position. ``argmax(logits / T + Gumbel)`` is an exact sample of ``softmax(logits / T)``
(the Gumbel-max trick), and the noise depends on nothing but the request: the same seed gives the same text alone
or among fifteen others. A greedy request (temperature 0) gets temperature 1, top-p 1 and no noise: plain argmax.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
    ContinuousBatchingLogitsProcessorList,
    ContinuousBatchingTemperatureLogitsWarper,
    ContinuousBatchingTopPLogitsWarper,
)
from transformers.generation.continuous_batching.requests import FutureRequestState
from transformers.generation.logits_process import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

GREEDY = -1
"""The noise key of a row that gets no noise."""
_KEY_MODULUS = 2**31 - 1


def noise_key(seed: int, step: int) -> int:
    """A non-negative int32 from the request's seed and the index of the token being drawn."""
    return (seed * 0x9E3779B1 + step * 0x85EBCA77 + 1) % _KEY_MODULUS


class SeededGumbelNoise(ContinuousBatchingLogitsProcessor):
    """Adds ``-log(-log(u))`` to each sampled row, ``u`` uniform from the generator seeded with the row's key."""

    supported_kwargs: ClassVar[dict[str, type]] = {"seed": int}
    ignored_kwargs: ClassVar[tuple[str, ...]] = ()

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(GREEDY)

    def prepare_tensor_args(self, requests_with_new_token: list[FutureRequestState]) -> torch.Tensor:
        keys = []
        for request in requests_with_new_token:
            seed = request.state.logit_processor_kwargs.get("seed", GREEDY)
            keys.append(GREEDY if seed < 0 else noise_key(seed, request.state.generated_len()))
        return torch.tensor(keys, dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        keys = tensor_arg[: scores.size(0)].tolist()
        if all(key == GREEDY for key in keys):
            return scores
        scores = scores.clone()
        tiny = torch.finfo(torch.float32).tiny
        for row, key in enumerate(keys):
            if key != GREEDY:
                generator = torch.Generator(device=scores.device).manual_seed(key)
                uniform = torch.rand(scores.size(1), generator=generator, device=scores.device).clamp_(tiny, 1 - 1e-7)
                scores[row] += -torch.log(-torch.log(uniform))
        return scores


class NucleusWhereAsked(ContinuousBatchingTopPLogitsWarper):
    """transformers' per-request top-p, on the rows that ask for ``top_p < 1`` only: its sort of the whole
    vocabulary was two thirds of a decoding step's time on the CPU, and greedy rows never need it."""

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        top_p = tensor_arg[: scores.size(0)].view(dtype=torch.float32)
        rows = (top_p < 1).nonzero().flatten()
        if rows.numel() == 0:
            return scores
        scores = scores.clone()
        scores[rows] = super().__call__(scores[rows], tensor_arg[: scores.size(0)][rows])
        return scores


def sampling_processors() -> ContinuousBatchingLogitsProcessorList:
    """Per-request temperature, top-p and seeded noise, in that order (as ``generate`` applies them).

    The defaults (temperature 1, top-p 1, no noise) leave a row's argmax as it is: greedy decoding.
    """
    processors = ContinuousBatchingLogitsProcessorList(
        LogitsProcessorList([
            ContinuousBatchingTemperatureLogitsWarper(TemperatureLogitsWarper(1.0)),
            NucleusWhereAsked(TopPLogitsWarper(1.0)),
            SeededGumbelNoise(),
        ]),
        per_request_processors=False,
    )
    # transformers counts the argument rows only for processors it converted itself
    processors.tensors_required = len(processors.logits_processor)
    return processors


def request_kwargs(temperature: float, top_p: float, seed: int) -> dict[str, float | int]:
    """The per-request arguments of :func:`sampling_processors` for one request (temperature 0: greedy)."""
    if temperature == 0:
        return {"temperature": 1.0, "top_p": 1.0, "seed": GREEDY}
    return {"temperature": float(temperature), "top_p": float(top_p), "seed": int(seed)}
