"""lm-evaluation-harness, both ways: radargate's splits as lm-eval tasks, and lm-eval on a trained run.

``export_tasks`` writes each task's examples of one split as a JSONL file and an lm-eval task YAML, so
that ``lm_eval --include_path OUT/ --tasks radargate_<task>`` scores exactly the examples radargate scores,
the same way: the context is the prompt without its trailing whitespace, each choice carries that
whitespace (``MCExample.scoring_pairs``), and there is no extra delimiter. lm-eval's ``acc`` is radargate's
``acc``; radargate's ``acc_norm`` divides by UTF-8 bytes, which is lm-eval's ``acc_bytes`` (and equals its
``acc_norm``, which divides by characters, wherever the choices are ASCII).

``evaluate_with_harness`` runs ``lm_eval.simple_evaluate`` with lm-eval's own ``HFLM`` wrapped around the
trained model (the base model carries the mixture or LoRA layers in place, so it is passed as is).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from radargate.experiment.data.examples import MCExample
from radargate.experiment.methods import generating_model
from radargate.files import atomic_write_directory

TASK_PREFIX = "radargate_"


def task_name(task: str) -> str:
    """lm-eval's name for a radargate task: ``logical_deduction/three_objects`` ->
    ``radargate_logical_deduction__three_objects`` (a path separator cannot be part of a task name)."""
    return TASK_PREFIX + task.replace("/", "__")


def multiple_choice_only(examples: Sequence[object]) -> list[MCExample]:
    """The multiple-choice examples (BIG-bench tasks or a user's multiple-choice sources); completion and
    chat sources have no choices to score, so lm-eval's ``multiple_choice`` tasks cannot hold them."""
    chosen = [example for example in examples if isinstance(example, MCExample)]
    if examples and not chosen:
        raise ValueError("the split has no multiple-choice examples: only multiple-choice data (BIG-bench tasks or "
                         "sources with format multiple_choice) can be exported as lm-eval tasks")
    return chosen


def export_tasks(examples: Sequence[MCExample], out_dir: str | Path, split: str) -> list[str]:
    """Write ``OUT/<name>/<split>.jsonl`` and ``OUT/<name>/<name>.yaml`` for each task among ``examples``;
    returns the lm-eval task names. ``OUT`` must not exist yet (nothing is overwritten)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; choose a new folder for the exported tasks")
    if not examples:
        raise ValueError(f"no examples in the {split} split to export")
    by_task: dict[str, list[MCExample]] = {}
    for example in examples:
        by_task.setdefault(example.task, []).append(example)

    def write(fresh: Path) -> None:  # the whole folder appears at once; each YAML names its data's final path
        for task, members in by_task.items():
            name = task_name(task)
            (fresh / name).mkdir()
            (fresh / name / f"{split}.jsonl").write_text(
                "".join(json.dumps(_document(example)) + "\n" for example in members))
            config = _task_config(task, out_dir / name / f"{split}.jsonl", split)
            (fresh / name / f"{name}.yaml").write_text(yaml.safe_dump(config))

    atomic_write_directory(out_dir, write)
    return [task_name(task) for task in by_task]


def _document(example: MCExample) -> dict[str, Any]:
    context, continuations = example.scoring_pairs()
    return {"id": example.id, "task": example.task, "context": context, "choices": list(continuations),
            "answer": example.answer}


def _task_config(task: str, data: Path, split: str) -> dict[str, Any]:
    """An lm-eval multiple-choice task reading the exported JSONL (absolute path: lm-eval resolves data
    files against the working directory, not the YAML)."""
    return {
        "task": task_name(task),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {split: str(data.resolve())}},
        "test_split": split,
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "target_delimiter": "",
        "metric_list": [{"metric": metric, "aggregation": "mean", "higher_is_better": True}
                        for metric in ("acc", "acc_norm", "acc_bytes")],
        "metadata": {"version": 1.0, "source": f"radargate task {task}, {split} split"},
    }


def evaluate_with_harness(
    model, tokenizer, tasks: Sequence[str], *, include_path: str | Path | None = None, batch_size: int = 8,
    limit: int | None = None,
) -> dict[str, dict[str, float]]:
    """lm-eval's metrics per task for ``model`` (a MoLoRAModel, a PEFT model or a plain causal LM)."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ValueError("--harness needs lm-evaluation-harness: pip install 'radargate[harness]'") from None
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [task for task in tasks if not manager.match_tasks([task])]
    if unknown:
        where = f"lm-eval or {include_path}" if include_path else "lm-eval (exported tasks need --harness-include)"
        raise ValueError(f"unknown lm-eval tasks {unknown}: not in {where}")
    language_model = HFLM(pretrained=generating_model(model), tokenizer=tokenizer, batch_size=batch_size,
                          add_bos_token=_adds_bos(tokenizer))
    output = simple_evaluate(model=language_model, tasks=list(tasks), task_manager=manager, limit=limit,
                             log_samples=False)
    return {task: _plain_metrics(values) for task, values in output["results"].items()}


def _adds_bos(tokenizer) -> bool:
    """Whether radargate's scorer starts each context with the tokenizer's special tokens (it encodes
    contexts with ``add_special_tokens=True``); lm-eval must do the same for scores to agree."""
    return len(tokenizer("a", add_special_tokens=True)["input_ids"]) > len(
        tokenizer("a", add_special_tokens=False)["input_ids"])


def _plain_metrics(values: dict[str, Any]) -> dict[str, float]:
    """``{"acc,none": 0.5, "acc_stderr,none": ...}`` -> ``{"acc": 0.5, "acc_stderr": ...}``."""
    return {key.split(",")[0]: value for key, value in values.items() if isinstance(value, int | float)}
