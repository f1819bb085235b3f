"""Training tokens/s with logits at every position against logits at the answer positions only.

The training step of ``radargate.experiment.train`` (forward under bf16 autocast, answer NLL plus the
auxiliary losses, backward, gradient clipping, AdamW) on the default model, SmolLM2-135M-Instruct,
with the quickstart's data and settings (``configs/quickstart.yaml``: n = 4, r = 4, q_proj/v_proj,
batch 8, max_length 160). Three ways to get the answer tokens' log-probabilities, timed alternately
on the same batches in one process:

- ``all_positions``: the LM head and log-softmax at every position (what a model's own loss does);
- ``from_first_answer``: the LM head from the batch's first answer position to the end (the
  trainer before answer-only logits);
- ``answer_positions``: ``answer_logprobs``, the LM head only at positions that predict an answer
  token in some row, the log-softmax only on answer tokens (the trainer now).

    python benchmarks/answer_logits.py                         # radar, softmax, lora: about 6 min on 2 CPU cores
    python benchmarks/answer_logits.py --methods radar --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from radargate import MoLoRAModel
from radargate.experiment.config import ExperimentConfig
from radargate.experiment.data.batching import IGNORE_INDEX, Batch, answer_logprobs, collate
from radargate.experiment.data.sources import load_splits
from radargate.experiment.methods import attach_method, load_base, trainable_parameters
from radargate.experiment.train import BatchSchedule, autocast_dtype, encode_training_examples
from radargate.hardware import cpu_description
from results_table import write_results

CONFIG = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
VARIANTS = ("all_positions", "from_first_answer", "answer_positions")


def logprobs_all_positions(model, batch: Batch, **kwargs) -> tuple[torch.Tensor, object]:
    output = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs)
    targets = batch.labels[:, 1:]
    logprobs = torch.log_softmax(output.logits[:, :-1].float(), dim=-1)
    picked = logprobs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked[targets != IGNORE_INDEX], output


def logprobs_from_first_answer(model, batch: Batch, **kwargs) -> tuple[torch.Tensor, object]:
    """The trainer's code before answer-only logits: one contiguous range of positions."""
    first = max(int((batch.labels != IGNORE_INDEX).int().argmax(dim=1).min()), 1)
    keep = torch.arange(first - 1, batch.input_ids.shape[1] - 1)
    output = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep, **kwargs)
    targets = batch.labels[:, first:]
    logprobs = torch.log_softmax(output.logits.float(), dim=-1)
    picked = logprobs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked[targets != IGNORE_INDEX], output


LOGPROBS = {
    "all_positions": logprobs_all_positions,
    "from_first_answer": logprobs_from_first_answer,
    "answer_positions": answer_logprobs,
}


def train_step(model, optimizer, batch: Batch, variant: str, dtype: torch.dtype | None) -> tuple[float, float]:
    """One step as ``_Trainer._step`` takes it; returns (seconds, loss)."""
    kwargs = {"with_aux": True} if isinstance(model, MoLoRAModel) else {}
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logprobs, output = LOGPROBS[variant](model, batch, **kwargs)
        loss = -logprobs.mean()
        if kwargs:
            loss = loss + output["aux_loss"]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, float(loss.detach())


def measure(method: str, args: argparse.Namespace) -> list[dict]:
    config = ExperimentConfig.load(CONFIG, [f"method={method}"])
    base, tokenizer = load_base(config)
    model = attach_method(base, config).train()
    optimizer = torch.optim.AdamW(list(trainable_parameters(model).values()), lr=1e-6)
    pairs = encode_training_examples(tokenizer, load_splits(config)["train"], config.data.max_length)
    schedule = BatchSchedule(len(pairs), config.train.batch_size, 1, config.train.seed)
    dtype = autocast_dtype(config.train.precision)
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    tokens = {v: 0 for v in VARIANTS}
    losses: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for round_ in range(args.warmup + args.repeats):
        batches = [collate([pairs[i] for i in schedule.micro_batch(round_ * args.steps + s, 0)],
                           tokenizer.pad_token_id) for s in range(args.steps)]
        for variant in VARIANTS:
            elapsed = 0.0
            for batch in batches:
                step_s, loss = train_step(model, optimizer, batch, variant, dtype)
                elapsed += step_s
                losses[variant].append(loss)
            if round_ >= args.warmup:
                seconds[variant].append(elapsed)
                tokens[variant] += sum(int(b.attention_mask.sum()) for b in batches)
    per_round = tokens["answer_positions"] / args.repeats
    rows = []
    for variant in VARIANTS:
        median_s = statistics.median(seconds[variant])
        rows.append({"method": method, "variant": variant, "median_s_per_round": median_s,
                     "tokens_per_s": per_round / median_s})
    reference = rows[0]["tokens_per_s"]
    for row in rows:
        row["x_all_positions"] = row["tokens_per_s"] / reference
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["radar", "softmax", "lora"])
    parser.add_argument("--steps", type=int, default=2, help="training steps per variant per round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--label", default="cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = [row for method in args.methods for row in measure(method, args)]
    environment = {
        "device": f"CPU: {cpu_description()}", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "config": "configs/quickstart.yaml", "precision": "bf16 autocast", "steps_per_round": args.steps,
        "warmup": args.warmup, "repeats": args.repeats,
    }
    lines = ["| method | logits at | median s per round | tokens/s | x all positions |", "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['variant']} | {r['median_s_per_round']:.2f} | {r['tokens_per_s']:.0f} | "
              f"{r['x_all_positions']:.2f} |" for r in rows]
    write_results(f"answer_logits_{args.label}", "Training tokens/s by where logits are computed", environment, rows,
                  lines)


if __name__ == "__main__":
    main()
