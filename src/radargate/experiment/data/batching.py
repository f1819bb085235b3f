"""Turning (prompt, answer) text pairs into padded token batches for training and scoring.

The prompt is tokenised with the tokenizer's special tokens (a BOS where the model uses one), the
answer without, and the two are joined, so the answer's tokens are exactly those that are
trained on or scored. A pair longer than ``max_length`` loses the beginning of its prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedPair:
    input_ids: tuple[int, ...]
    context_length: int
    """Tokens before the answer; the answer is ``input_ids[context_length:]``."""


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    """``input_ids`` with prompt and padding positions set to ``IGNORE_INDEX``."""

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))


def encode_pair(tokenizer, context: str, continuation: str, max_length: int) -> EncodedPair:
    context_ids = tokenizer(context, add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not answer_ids:
        raise ValueError(f"answer {continuation!r} tokenises to nothing; every choice needs at least one token")
    answer_ids = answer_ids[: max_length - 1]
    context_ids = context_ids[max(0, len(context_ids) + len(answer_ids) - max_length) :]
    return EncodedPair(tuple(context_ids) + tuple(answer_ids), len(context_ids))


def collate(pairs: Sequence[EncodedPair], pad_token_id: int) -> Batch:
    """Right-pad to the longest pair; labels cover the answers only."""
    length = max(len(pair.input_ids) for pair in pairs)
    input_ids = torch.full((len(pairs), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(pairs), length), dtype=torch.long)
    labels = torch.full((len(pairs), length), IGNORE_INDEX, dtype=torch.long)
    for row, pair in enumerate(pairs):
        ids = torch.tensor(pair.input_ids)
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
        labels[row, pair.context_length : len(ids)] = ids[pair.context_length :]
    return Batch(input_ids, attention_mask, labels)


def answer_positions(batch: Batch) -> torch.Tensor:
    """The positions whose logits predict an answer token in some row of the batch, ``[T_keep]``.

    Position ``t`` predicts token ``t + 1``; the set is the union over the rows (``logits_to_keep``
    takes one index set for the whole batch), so a row's own answer positions are all in it.
    """
    predicts_answer = (batch.labels[:, 1:] != IGNORE_INDEX).any(dim=0)
    return predicts_answer.nonzero().squeeze(-1)


def answer_logprobs(model, batch: Batch, **forward_kwargs) -> tuple[torch.Tensor, object]:
    """The log-probability of every answer token in the batch, ``[N]`` (row by row, left to right),
    and the model output (auxiliary losses).

    The vocabulary projection runs only at ``answer_positions`` (``logits_to_keep``), not over the
    prompts and padding, and the log-softmax only on the logits of real answer tokens: for a
    49k-token vocabulary these were a large share of a training step on the CPU.
    """
    keep = answer_positions(batch)
    output = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep, **forward_kwargs
    )
    targets = batch.labels[:, keep + 1]
    is_answer = targets != IGNORE_INDEX
    logits = output.logits[is_answer]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    logprobs = -torch.nn.functional.cross_entropy(logits, targets[is_answer], reduction="none")
    return logprobs, output
