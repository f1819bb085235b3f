"""The model card of a run: ``README.md`` in its folder, as a Hub repository has one.

Front matter that the Hub reads (``library_name``, ``base_model``, ``tags``), then what was trained
(base model, method, gate, experts, rank, alpha, target modules), on what (tasks and caps), with what
budget (steps, batch, learning rate...), the results when the run has them, and how to load it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from radargate.experiment.config import BASELINES, ExperimentConfig
from radargate.experiment.report.format import percent
from radargate.files import atomic_write_text

CARD_NAME = "README.md"


def model_card(config: ExperimentConfig, result: dict[str, Any] | None = None) -> str:
    """The card's markdown; ``result`` is the run's ``result.json`` (test scores), if it has one."""
    adapter, train, data = config.adapter, config.train, config.data
    mixture = config.method not in BASELINES
    front = {
        "library_name": "radargate" if mixture else "peft",
        "base_model": config.model.name,
        "tags": ["radargate", "lora", *(["mixture-of-experts", f"gate-{adapter.gate}"] if mixture else [])],
    }
    if config.method == "lora":
        what = f"PEFT's LoRA (rank {adapter.num_experts * adapter.r}), the single-adapter baseline"
    elif mixture:
        what = (f"a mixture of {adapter.num_experts} LoRA experts (r={adapter.r}, alpha={adapter.alpha:g}) "
                f"mixed by the {adapter.gate} gate")
    else:
        what = "the untrained base model (method base)"
    rows = [
        ("base model", config.model.name), ("method", config.method),
        *([("gate", adapter.gate), ("experts", adapter.num_experts)] if mixture else []),
        ("r", adapter.num_experts * adapter.r if config.method == "lora" else adapter.r), ("alpha", adapter.alpha),
        ("target modules", adapter.target_modules), ("dropout", adapter.dropout),
        *[(f"{name} weight", weight) for name, weight in adapter.aux_loss_weights().items()],
    ]
    budget = [
        ("steps", train.steps), ("batch size", train.batch_size), ("gradient accumulation", train.grad_accum),
        ("learning rate", train.lr), ("warm-up steps", train.warmup_steps), ("weight decay", train.weight_decay),
        ("precision", train.precision), ("seed", train.seed),
    ]
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {config.name} ({config.method})", "",
        f"{what[0].upper()}{what[1:]} on `{config.model.name}`, trained with radargate "
        "(`radargate train`; `config.yaml` in this folder is the whole recipe).", "",
        "## Adapter", "", *_table(rows), "",
        "## Data", "",
        f"Tasks: {', '.join(f'`{task}`' for task in getattr(data, 'tasks', []) or [])}; at most "
        f"{data.max_train_per_task} training examples per task, sequences up to {data.max_length} tokens.", "",
        "## Training budget", "", *_table(budget), "",
    ]
    lines += _results(result) if result else ["## Results", "", "Not evaluated yet (no `result.json`).", ""]
    lines += _usage(config, mixture)
    return "\n".join(lines)


def write_model_card(run_dir: str | Path, config: ExperimentConfig, result: dict[str, Any] | None = None) -> Path:
    path = Path(run_dir) / CARD_NAME
    atomic_write_text(path, model_card(config, result))
    return path


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    return ["| setting | value |", "| --- | --- |", *[f"| {name} | {_value(value)} |" for name, value in rows]]


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(f"`{item}`" for item in value)
    return f"`{value}`" if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


def _results(result: dict[str, Any]) -> list[str]:
    if result.get("failed"):
        return ["## Results", "", f"Training failed: {result['failed']}", ""]
    lines = ["## Results", ""]
    test = result.get("test")
    if test:
        lines += [
            f"Test split, {test['n']} examples: macro accuracy {percent(test.get('macro_acc'))}%, "
            f"length-normalised {percent(test.get('macro_acc_norm'))}%, "
            f"answer NLL {_nats(test.get('macro_answer_nll'))} nats/token (accuracy only where a task has choices).",
            "",
            "| task | n | acc (%) | acc_norm (%) | answer NLL |", "| --- | --- | --- | --- | --- |",
            *[f"| {task} | {row['n']} | {percent(row.get('acc'))} | {percent(row.get('acc_norm'))} | "
              f"{_nats(row.get('answer_nll'))} |" for task, row in test.get("per_task", {}).items()],
            "",
        ]
    if result.get("final_train_loss") is not None:
        lines += [f"Final training loss (mean of the last 10 steps): {result['final_train_loss']:.4f}.", ""]
    return lines


def _usage(config: ExperimentConfig, mixture: bool) -> list[str]:
    if not mixture:
        return []
    return [
        "## Use", "",
        "```python",
        "from radargate import MoLoRAModel",
        "from radargate.experiment.loading import load_model_and_tokenizer",
        "",
        f'base, tokenizer = load_model_and_tokenizer("{config.model.name}")   # or transformers\' from_pretrained',
        'model = MoLoRAModel.from_pretrained(base, "adapter")   # adapter/ in this folder',
        "```",
        "",
        "Each expert as an ordinary PEFT LoRA adapter: `radargate export-experts <this folder> <out>`.",
        "",
    ]


def _nats(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
