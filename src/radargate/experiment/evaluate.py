"""Multiple-choice evaluation by per-choice log-likelihood; completions by answer NLL and teacher-forced exact
match; GSM8K by generation and exact match; ``evaluate_run``, what ``radargate eval`` does.

Each choice is scored as the summed log-probability of its tokens after the prompt. ``acc`` picks
the highest sum; ``acc_norm`` divides by the choice's length in UTF-8 bytes first (as
lm-evaluation-harness does), which removes the bias towards short answers. Accuracy is reported
per task with the number of examples, and macro-averaged over tasks.

``answer_nll`` is the mean negative log-likelihood per token of the correct answer (nats): the
low-variance signal that separates methods long before accuracy does.

``exact_match`` (completion rows only; None elsewhere) is 1 when every token of the completion, the end-of-sequence
token excluded, is the argmax after the prompt and the completion tokens before it: exactly when greedy decoding
from the prompt begins with these tokens (``generate(do_sample=False)``; a text the model would spell with other
tokens does not count). It comes from the same forward pass as answer NLL (``batching.answer_scores``), so it costs
no generation. The EOS token is left out because a greedy answer that goes on after the right answer (small models
ramble) is still the right answer.

Every result also lists each example (``examples``: task, id, acc, acc_norm, answer_nll, exact_match), so that
methods evaluated on the same examples can be compared by a paired bootstrap (``report/intervals.py``).

Speed: BIG-bench prompts are long (they list the choices) and the choices short, so each prompt
runs once and its KV cache is shared by all of its choices, instead of once per choice.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Cache
from transformers.utils import ModelOutput

from radargate.experiment.config import ExperimentConfig
from radargate.experiment.data.batching import IGNORE_INDEX, answer_scores, collate, pair_ids
from radargate.experiment.data.bigbench import load_suite
from radargate.experiment.data.examples import CompletionExample, Example, MCExample, encode_example
from radargate.experiment.data.gsm8k import GSM8KExample, is_correct, load_gsm8k_test
from radargate.experiment.data.sources import check_lengths, load_splits
from radargate.experiment.methods import model_to_evaluate


@dataclass(frozen=True)
class _Item:
    context: list[int]
    continuations: list[list[int]]


def _encode(tokenizer, context: str, continuations: Sequence[str], max_length: int) -> _Item:
    pairs = [pair_ids(tokenizer, context, continuation, max_length) for continuation in continuations]
    shortest = min((context_ids for context_ids, _ in pairs), key=len)  # the context that leaves room for every choice
    return _Item(shortest, [answer_ids for _, answer_ids in pairs])


@torch.no_grad()
def score_choices(
    model, tokenizer, items: Sequence[tuple[str, Sequence[str]]], *, batch_size: int, max_length: int
) -> list[list[float]]:
    """For each ``(context, continuations)``, the summed log-probability of every continuation.

    ``batch_size`` bounds the number of continuations per forward pass (at least one item).
    """
    encoded = [_encode(tokenizer, context, continuations, max_length) for context, continuations in items]
    return _score_encoded(model, tokenizer, encoded, batch_size=batch_size)


def _score_encoded(model, tokenizer, encoded: Sequence[_Item], *, batch_size: int) -> list[list[float]]:
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].context))
    device = next(model.parameters()).device
    scores: list[list[float]] = [[] for _ in encoded]
    group: list[int] = []
    for index in [*order, None]:
        rows = sum(len(encoded[i].continuations) for i in group)
        if group and (index is None or rows + len(encoded[index].continuations) > batch_size):
            group_scores = _score_group(model, [encoded[i] for i in group], tokenizer, device)
            for i, item_scores in zip(group, group_scores, strict=True):
                scores[i] = item_scores
            group = []
        if index is not None:
            group.append(index)
    return scores


def _score_group(model, items: list[_Item], tokenizer, device) -> list[list[float]]:
    pad = tokenizer.pad_token_id
    context_lengths = torch.tensor([len(item.context) for item in items], device=device)
    context_ids, context_mask = _pad([item.context for item in items], pad, device, left=True)
    prompt = model(
        input_ids=context_ids, attention_mask=context_mask, position_ids=(context_mask.cumsum(-1) - 1).clamp_min(0),
        use_cache=True, logits_to_keep=1,
    )
    first_logprobs = torch.log_softmax(prompt.logits[:, -1].float(), dim=-1)
    owner = torch.tensor([i for i, item in enumerate(items) for _ in item.continuations], device=device)
    continuations = [c for item in items for c in item.continuations]
    answer_ids, answer_mask = _pad(continuations, pad, device, left=False)
    totals = first_logprobs[owner].gather(-1, answer_ids[:, :1]).squeeze(-1)
    if answer_ids.shape[1] > 1:
        cache_keyword, cache = _kv_cache(prompt)
        cache.reorder_cache(owner)
        steps = answer_ids.shape[1]
        rest = model(
            input_ids=answer_ids, attention_mask=torch.cat([context_mask[owner], answer_mask], dim=1),
            position_ids=context_lengths[owner, None] + torch.arange(steps, device=device),
            use_cache=True, logits_to_keep=torch.arange(steps - 1, device=device), **{cache_keyword: cache},
        )
        logprobs = torch.log_softmax(rest.logits.float(), dim=-1).gather(-1, answer_ids[:, 1:, None]).squeeze(-1)
        totals = totals + (logprobs * answer_mask[:, 1:]).sum(-1)
    per_row = totals.tolist()
    result, start = [], 0
    for item in items:
        result.append(per_row[start : start + len(item.continuations)])
        start += len(item.continuations)
    return result


def _kv_cache(output: ModelOutput) -> tuple[str, Cache]:
    """The forward output's KV cache and the keyword argument that passes it back to the model.

    Within 5.x, transformers renamed ``past_key_values`` to ``cache`` (the old name now warns that
    it is deprecated). The output's own field names the keyword this version's forward takes, so
    no warning on the new versions and still the right keyword on the older ones we support.
    """
    keyword = "cache" if "cache" in output else "past_key_values"
    return keyword, output[keyword]


def _pad(sequences: list[list[int]], pad: int, device, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        span = slice(length - len(sequence), length) if left else slice(0, len(sequence))
        ids[row, span] = torch.tensor(sequence, dtype=torch.long)
        mask[row, span] = 1
    return ids.to(device), mask.to(device)


def mixed_precision(setting: str) -> str:
    """``train.precision`` resolved: ``auto`` is bf16 where the hardware computes it natively (a GPU that has it,
    a CPU with AVX512-BF16 or AMX), else no mixed precision. Emulated bf16 is slower than float32, not faster:
    8x for the default model's output layer on an AVX2-only CPU, where a CPU with AVX512-BF16 ran the
    quickstart 1.8x faster in bf16."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported() else "no"


def autocast_dtype(setting: str) -> torch.dtype | None:
    """The autocast dtype that evaluation uses to match training's mixed precision."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision(setting))


def evaluate_examples(
    model,
    tokenizer,
    examples: Sequence[Example],
    *,
    batch_size: int = 32,
    max_length: int = 256,
    autocast_dtype: torch.dtype | None = None,
) -> dict:
    """Per task and macro-averaged over tasks: multiple-choice examples by accuracy (plain and
    length-normalised) and answer NLL, completion examples by answer NLL and exact match, chat examples by answer NLL
    alone (a metric an example does not have is None)."""
    choice = [example for example in examples if isinstance(example, MCExample)]
    text = [example for example in examples if not isinstance(example, MCExample)]
    with _evaluating(model, autocast_dtype):
        encoded = [_encode(tokenizer, *example.scoring_pairs(), max_length) for example in choice]
        scores = _score_encoded(model, tokenizer, encoded, batch_size=batch_size)
        records = _text_records(model, tokenizer, text, batch_size=batch_size, max_length=max_length)
    answer_lengths = [len(item.continuations[example.answer]) for item, example in zip(encoded, choice, strict=True)]
    return _aggregate(_choice_records(choice, scores, answer_lengths) + records)


@contextlib.contextmanager
def _evaluating(model, autocast_dtype: torch.dtype | None) -> Iterator[None]:
    """Eval mode (restored afterwards) and, to match mixed-precision training, autocast."""
    was_training = model.training
    model.eval()
    device_type = next(model.parameters()).device.type
    autocast = (
        torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    )
    try:
        with autocast:
            yield
    finally:
        model.train(was_training)


@torch.no_grad()
def _text_records(model, tokenizer, examples: Sequence[Example], *, batch_size: int, max_length: int) -> list[dict]:
    """Each completion or conversation's mean NLL per answer token, its loss as trained, and for completions
    whether greedy decoding would begin with it (module docstring), from one forward pass (``answer_scores``).

    Batches are made of sequences of similar length (the records come back in the order of ``examples``): in
    the order given, a batch pads its short sequences to its longest, which cost a third more tokens on the
    reasoning-gym study's unseen tasks.
    """
    device = next(model.parameters()).device
    encoded = [encode_example(tokenizer, example, max_length) for example in examples]
    by_length = sorted(range(len(examples)), key=lambda index: len(encoded[index].input_ids))
    records: list[dict] = [{} for _ in examples]
    for start in range(0, len(by_length), batch_size):
        indices = by_length[start : start + batch_size]
        batch = collate([encoded[index] for index in indices], tokenizer.pad_token_id)
        logprobs, greedy = answer_scores(model, batch.to(device))
        counts = (batch.labels[:, 1:] != IGNORE_INDEX).sum(dim=1).tolist()
        for index, row, hits in zip(indices, logprobs.float().split(counts), greedy.split(counts), strict=True):
            example = examples[index]
            records[index] = {"task": example.task, "id": example.id, "acc": None, "acc_norm": None,
                              "answer_nll": -float(row.sum()) / max(1, row.numel()),
                              "exact_match": _exact_match(example, hits, tokenizer)}
    return records


def _exact_match(example: Example, hits: torch.Tensor, tokenizer) -> float | None:
    """1.0 when every completion token but the trailing end-of-sequence one is the argmax, else 0.0; None for
    a conversation (its turns are several answers)."""
    if not isinstance(example, CompletionExample):
        return None
    answer = hits[:-1] if tokenizer.eos_token_id is not None else hits
    return float(bool(answer.all()))


METRICS = ("acc", "acc_norm", "answer_nll", "exact_match")
"""Per-example metrics, averaged per task and then over tasks (``macro_<metric>``)."""


def _choice_records(
    examples: Sequence[MCExample], scores: list[list[float]], answer_lengths: Sequence[int]
) -> list[dict]:
    return [
        _example_record(example, choice_scores, length)
        for example, choice_scores, length in zip(examples, scores, answer_lengths, strict=True)
    ]


def _aggregate(records: list[dict]) -> dict:
    """Per-task means of each metric (a metric that no example of the task has is None), and their macro means."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_task[record["task"]].append(record)
    per_task = {
        task: {**{metric: mean(r[metric] for r in rows) for metric in METRICS}, "n": len(rows)}
        for task, rows in sorted(by_task.items())
    }
    return {
        "per_task": per_task,
        **{f"macro_{metric}": mean(r[metric] for r in per_task.values()) for metric in METRICS},
        "n": len(records),
        "examples": records,
    }


def _example_record(example: MCExample, choice_scores: Sequence[float], answer_length: int) -> dict:
    """One example's outcome: which choice won (plain and per byte) and the correct answer's NLL per token."""
    _, continuations = example.scoring_pairs()
    normed = [s / max(1, len(c.encode("utf-8"))) for s, c in zip(choice_scores, continuations, strict=True)]
    return {
        "task": example.task,
        "id": example.id,
        "acc": float(_argmax(choice_scores) == example.answer),
        "acc_norm": float(_argmax(normed) == example.answer),
        "answer_nll": -choice_scores[example.answer] / max(1, answer_length),
        "exact_match": None,
    }


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are there (``None`` is a missing value), or ``None`` if none are."""
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def answer_of_completion(completion: str) -> str:
    """The model's answer: its text up to where it starts a new question (small models ramble on)."""
    return completion.split("\nQuestion:", 1)[0]


@torch.no_grad()
def evaluate_gsm8k(
    model, tokenizer, examples: Sequence[GSM8KExample], *, batch_size: int = 8, max_new_tokens: int = 256
) -> dict:
    """Greedy generation from the ``Question: ...\nAnswer:`` prompt; exact match of the final number."""
    device = next(model.parameters()).device
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues on the right
    was_training = model.training
    model.eval()
    hits = []
    try:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            encoded = tokenizer([e.prompt for e in chunk], return_tensors="pt", padding=True).to(device)
            generated = model.generate(
                **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            new_tokens = generated[:, encoded["input_ids"].shape[1] :]
            completions = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            hits += [is_correct(answer_of_completion(c), e) for c, e in zip(completions, chunk, strict=True)]
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return {"exact_match": mean(hits), "n": len(hits)}


def evaluate_run(
    run_dir: str | Path | None = None,
    config_path: str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    tasks: Sequence[str] | None = None,
    split: str = "test",
    gsm8k: int = 0,
) -> tuple[str, dict]:
    """``radargate eval``: a trained run (``run_dir``) or a config's untrained base model on one split of
    its data (``tasks``: other BIG-bench tasks, or some of its sources by name), and optionally the first
    ``gsm8k`` GSM8K test problems.

    Returns the method's name and the results.
    """
    model, tokenizer, config = model_to_evaluate(run_dir, config_path, overrides)
    examples = task_splits(config, tasks)[split]
    check_lengths(tokenizer, examples, config.data.max_length)
    result = evaluate_examples(model, tokenizer, examples, batch_size=config.eval.batch_size,
                               max_length=config.data.max_length,
                               autocast_dtype=autocast_dtype(config.train.precision))
    if gsm8k:
        result["gsm8k"] = evaluate_gsm8k(model, tokenizer, load_gsm8k_test()[:gsm8k])
    return config.method, result


def task_splits(config: ExperimentConfig, tasks: Sequence[str] | None) -> dict[str, list[Example]]:
    """The splits of ``tasks`` (``--tasks`` of eval and export-tasks): BIG-bench task names for a BIG-bench config,
    source names for a config with ``data.sources``; ``None``: the config's own."""
    data = config.data
    if not data.sources:
        return load_suite(tasks or data.tasks, seed=data.split_seed, max_per_split=data.caps,
                          min_test_per_task=data.min_test_per_task)
    unknown = sorted(set(tasks or ()) - set(data.task_names))
    if unknown:
        raise ValueError(f"--tasks {unknown} are not sources of this config; its sources: {data.task_names}")
    splits = load_splits(config)
    return {split: [e for e in examples if not tasks or e.task in tasks] for split, examples in splits.items()}
