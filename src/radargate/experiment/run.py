"""One run: prepare its folder, train, evaluate on the test split, summarise into ``result.json``.

Run folder ``<output_dir>/<name>/``: ``config.yaml`` (what made the run), what the training loop
writes (``log.jsonl``, ``checkpoint/``, ``adapter/``; see ``radargate.experiment.train``),
``result.json`` and ``README.md`` (the model card, ``radargate.experiment.model_card``). A finished
run is read back, never trained again; an unfinished one resumes from its checkpoint with the same
settings only. A run whose training diverges is recorded as failed
(``{"method": ..., "failed": message}``).

Under ``accelerate launch`` (docs/distributed.md) every process trains and evaluates, and the main
process alone writes the folder's files (the run folder must be on a filesystem all nodes share).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from radargate.errors import TrainingDiverged
from radargate.experiment.config import ExperimentConfig
from radargate.experiment.data.examples import Example
from radargate.experiment.data.packaged import data_versions
from radargate.experiment.data.sources import check_lengths, load_splits
from radargate.experiment.evaluate import autocast_dtype, evaluate_examples
from radargate.experiment.methods import build_model, describe_adapter, trainable_parameters, trains_anything
from radargate.experiment.model_card import write_model_card
from radargate.experiment.routing import summarize_routing
from radargate.experiment.train import TrainState, fit, processes
from radargate.files import atomic_write_json, atomic_write_text, read_json
from radargate.model import MoLoRAModel

RESULT_NAME = "result.json"


def train(
    config: ExperimentConfig,
    *,
    resume: bool = False,
    run_dir: Path | None = None,
    show_progress: bool = True,
    splits: dict[str, list[Example]] | None = None,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, TrainState]:
    """Train ``config.method`` in its run folder and return ``(model, tokenizer, state)``.

    ``splits`` saves reloading the data when the caller already has ``load_splits(config)``.
    """
    run_dir = Path(run_dir or config.run_dir)
    refuse_another_run(run_dir, config, resume)
    torch.manual_seed(config.train.seed)
    random.seed(config.train.seed)
    model, tokenizer = build_model(config)
    splits = splits or load_splits(config)
    check_lengths(tokenizer, (example for split in splits.values() for example in split), config.data.max_length)
    write_run_config(run_dir, config)  # only now: a run that cannot start (a bad model, data) leaves no folder
    if not trains_anything(config):
        return model, tokenizer, TrainState()
    model, state = fit(config, model, tokenizer, splits, run_dir, resume=resume, show_progress=show_progress)
    if processes().is_main_process:
        write_model_card(run_dir, config)
    return model, tokenizer, state


def refuse_another_run(run_dir: Path, config: ExperimentConfig, resume: bool) -> None:
    """An existing run is an error unless resumed with the same settings (every process checks, so all refuse or
    none does)."""
    if (run_dir / "config.yaml").is_file():
        if not resume:
            raise FileExistsError(
                f"{run_dir} already holds a run; pass --resume to continue it, or choose another name"
            )
        check_same_run(run_dir, config)


def write_run_config(run_dir: Path, config: ExperimentConfig) -> None:
    """Make the run folder with its ``config.yaml``, once every process has passed ``refuse_another_run``."""
    group = processes()
    group.wait_for_everyone()
    if group.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    group.wait_for_everyone()


IRRELEVANT_TO_A_RUN = ("output_dir", "name", "compare", "study")
"""Settings that do not change what one run computes (where it lives, which others run beside it)."""


def check_same_run(run_dir: Path, config: ExperimentConfig) -> None:
    """Refuse to continue (or reuse) a run with settings other than those it was made with."""
    previous = ExperimentConfig.load(run_dir / "config.yaml").to_dict()
    current = config.to_dict()
    changed = config_differences(previous, current)
    if changed:
        raise ValueError(f"cannot resume {run_dir} with a different config; changed: {', '.join(changed[:8])}")


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key.sub: old -> new`` for every setting that differs, settings in ``IRRELEVANT_TO_A_RUN`` aside."""
    changed = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key in IRRELEVANT_TO_A_RUN:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changed


def summarize(config: ExperimentConfig, model, state: TrainState) -> dict[str, Any]:
    """The training half of a method's result (evaluation adds the rest)."""
    trainable = sum(p.numel() for p in trainable_parameters(model).values())
    return {
        "method": config.method,
        "adapter": describe_adapter(model),
        "trainable_params": trainable,
        "skipped_steps": state.skipped_steps,
        "train_time_s": state.train_time_s,
        "tokens_per_s": state.tokens / state.train_time_s if state.train_time_s else None,
        "final_train_loss": smoothed_final_loss(state.history),
        "history": state.history,
        "validation": state.validation,
        "steps": state.step,
    }


def smoothed_final_loss(history: list[dict[str, Any]], window: int = 10) -> float | None:
    """Mean LM loss over the last ``window`` steps: one batch's loss is noisy."""
    losses = [row["lm_loss"] for row in history[-window:] if not row.get("skipped")]
    return sum(losses) / len(losses) if losses else None


def evaluate_with_routing(model, tokenizer, config: ExperimentConfig, splits: dict[str, list]) -> dict[str, Any]:
    """Test scores, plus routing statistics gathered on the same inputs for mixtures, and the fit:
    the same scores on a fixed subset of the training examples (``eval.fit_per_task`` per task)."""
    kwargs = {
        "batch_size": config.eval.batch_size,
        "max_length": config.data.max_length,
        "autocast_dtype": autocast_dtype(config.train.precision),
    }
    fit_examples = first_per_task(splits["train"], config.eval.fit_per_task)
    fit = evaluate_examples(model, tokenizer, fit_examples, **kwargs) if fit_examples else None
    if not isinstance(model, MoLoRAModel):
        test = evaluate_examples(model, tokenizer, splits["test"], **kwargs)
        return {"test": test, "routing": None, "fit": fit}
    with model.record_routing() as stats:
        test = evaluate_examples(model, tokenizer, splits["test"], **kwargs)
    return {"test": test, "routing": summarize_routing(stats), "fit": fit}


def first_per_task(examples: list[Example], count: int) -> list[Example]:
    """The first ``count`` examples of each task, in split order: the same subset for every method."""
    taken: dict[str, int] = {}
    chosen = []
    for example in examples:
        if taken.get(example.task, 0) < count:
            taken[example.task] = taken.get(example.task, 0) + 1
            chosen.append(example)
    return chosen


def run_method(
    config: ExperimentConfig,
    run_dir: Path,
    *,
    resume: bool = True,
    show_progress: bool = True,
    splits: dict[str, list] | None = None,
) -> dict:
    """Train ``config.method`` in ``run_dir`` and evaluate it on the test split.

    With ``resume``, a finished run's result is returned as it is and an unfinished one continues
    from its checkpoint; without, an existing run is an error (nothing is overwritten). A run that
    diverges raises ``TrainingDiverged``, now and whenever it is asked for again (its ``result.json``
    records the failure).
    """
    result_path = run_dir / RESULT_NAME
    if resume and result_path.is_file():
        check_same_run(run_dir, config)
        result = read_json(result_path)
        if result.get("failed"):
            raise TrainingDiverged(f"{result['failed']} (recorded in {result_path}; remove {run_dir} to train again)")
        return result
    started = time.perf_counter()
    splits = splits or load_splits(config)
    try:
        model, tokenizer, state = train(
            config, resume=resume, run_dir=run_dir, show_progress=show_progress, splits=splits
        )
    except TrainingDiverged as error:
        if processes().is_main_process:
            atomic_write_json(result_path, failed_result(config, error))
        raise
    result = summarize(config, model, state)
    versions = data_versions(config.data.sources)
    if versions:  # the rows of a generated source depend on its package's version
        result["data_versions"] = versions
    result.update(evaluate_with_routing(model, tokenizer, config, splits))
    result["wall_time_s"] = time.perf_counter() - started
    if processes().is_main_process:
        atomic_write_json(result_path, result)
        write_model_card(run_dir, config, result)
    return result


def failed_result(config: ExperimentConfig, error: Exception) -> dict[str, Any]:
    """The result of a run that did not finish: tables show it as failed, with the reason."""
    return {"method": config.method, "failed": str(error)}


def run_or_record_failure(config: ExperimentConfig, run_dir: Path, **kwargs: Any) -> dict[str, Any]:
    """``run_method``, with a diverged run returned as a failed result so that a sweep goes on."""
    try:
        return run_method(config, run_dir, **kwargs)
    except TrainingDiverged as error:
        return failed_result(config, error)
