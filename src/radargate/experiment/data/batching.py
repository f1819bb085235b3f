"""Turning token sequences with marked answer tokens into padded batches for training and scoring.

A sequence's ``answer_mask`` marks the tokens that are trained on or scored: one answer after a prompt
(``encode_pair``), or several spans, such as the assistant turns of a conversation
(``radargate.experiment.data.custom``). For a (prompt, answer) pair the prompt is tokenised with the
tokenizer's special tokens (a BOS where the model uses one), the answer without, and the two are
joined. A pair longer than ``max_length`` loses the beginning of its prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedSequence:
    input_ids: tuple[int, ...]
    answer_mask: tuple[bool, ...]
    """True where the token is an answer token (trained on, scored); one flag per ``input_ids`` entry."""


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    """``input_ids`` with every position outside the answers (prompts, padding) set to ``IGNORE_INDEX``."""

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))


def pair_ids(tokenizer, context: str, continuation: str, max_length: int) -> tuple[list[int], list[int]]:
    """The context's and the answer's token ids, the context cut from the left to fit ``max_length``.

    An empty context (a task that scores its choices unconditionally, such as BIG-bench's
    ``misconceptions_russian``) becomes the start token, as lm-evaluation-harness's prefix token: the answer's
    first token then has a prediction to be scored on.
    """
    context_ids = tokenizer(context, add_special_tokens=True)["input_ids"] or [start_token(tokenizer)]
    answer_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not answer_ids:
        raise ValueError(f"answer {continuation!r} tokenises to nothing; every choice needs at least one token")
    answer_ids = answer_ids[: max_length - 1]
    context_ids = context_ids[max(0, len(context_ids) + len(answer_ids) - max_length) :]
    return context_ids, answer_ids


def start_token(tokenizer) -> int:
    """What an empty context is replaced by: the beginning-of-sequence token, else the end-of-sequence one."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError(f"{type(tokenizer).__name__} has neither a beginning- nor an end-of-sequence token, so an "
                         "empty context cannot be scored; give every example a prompt")
    return token


def encode_pair(tokenizer, context: str, continuation: str, max_length: int) -> EncodedSequence:
    """The context followed by one answer, the answer marked."""
    context_ids, answer_ids = pair_ids(tokenizer, context, continuation, max_length)
    return EncodedSequence(tuple(context_ids + answer_ids), (False,) * len(context_ids) + (True,) * len(answer_ids))


def collate(sequences: Sequence[EncodedSequence], pad_token_id: int) -> Batch:
    """Right-pad to the longest sequence; labels cover the answer tokens only."""
    length = max(len(sequence.input_ids) for sequence in sequences)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids = torch.tensor(sequence.input_ids, dtype=torch.long)
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.where(torch.tensor(sequence.answer_mask), ids, IGNORE_INDEX)
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
    logits, targets, output = _answer_logits(model, batch, **forward_kwargs)
    return -torch.nn.functional.cross_entropy(logits, targets, reduction="none"), output


def answer_scores(model, batch: Batch, **forward_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Per answer token, ``[N]`` each (as :func:`answer_logprobs`): its log-probability, and whether it is the
    argmax of the logits that predict it, given the prompt and the answer tokens before it (teacher forcing).

    An answer whose tokens are all argmax is exactly what greedy decoding from the prompt begins with
    (first index on ties, as ``torch.argmax`` and ``generate()`` both take), so one forward pass gives exact
    match without generating.
    """
    logits, targets, _ = _answer_logits(model, batch, **forward_kwargs)
    logprobs = -torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    return logprobs, logits.argmax(dim=-1) == targets


def _answer_logits(model, batch: Batch, **forward_kwargs) -> tuple[torch.Tensor, torch.Tensor, object]:
    """The logits that predict each answer token ``[N, V]`` (at least float32), its targets ``[N]``, the output."""
    keep = answer_positions(batch)
    output = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep, **forward_kwargs
    )
    targets = batch.labels[:, keep + 1]
    is_answer = targets != IGNORE_INDEX
    logits = output.logits[is_answer]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits, targets[is_answer], output
