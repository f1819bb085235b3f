"""Train and evaluate one method, or several side by side with the same data, budget and seed.

``compare`` keeps each method in ``<run_dir>/<method>/``; a method whose ``result.json`` exists is
not run again, and an unfinished one resumes from its checkpoint, so an interrupted comparison
loses nothing. The combined ``results.json``, ``report.md`` and plots are rebuilt at the end.
A method whose training diverges is recorded as failed (``{"method": ..., "failed": message}``)
and the others go on.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from radargate.analysis import summarize_routing
from radargate.errors import TrainingDiverged
from radargate.evaluate import evaluate_multiple_choice
from radargate.experiment import ExperimentConfig
from radargate.files import atomic_write_json
from radargate.model import MoLoRAModel
from radargate.report import write_report
from radargate.train import autocast_dtype, check_same_run, load_splits, summarize, train

RESULT_NAME = "result.json"


def hardware_description() -> str:
    device = f"GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else f"CPU: {cpu_description()}"
    return f"{device}, torch {torch.__version__}"


def cpu_description() -> str:
    return f"{os.cpu_count()} cores ({_cpu_model() or platform.processor() or platform.machine()})"


def _cpu_model() -> str | None:
    """The processor's name on Linux (``platform.processor()`` is often empty there)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def evaluate_with_routing(model, tokenizer, config: ExperimentConfig, examples) -> dict[str, Any]:
    """Test accuracy, plus routing statistics gathered on the same inputs for mixtures."""
    kwargs = {
        "batch_size": config.eval.batch_size,
        "max_length": config.data.max_length,
        "autocast_dtype": autocast_dtype(config.train.precision),
    }
    if not isinstance(model, MoLoRAModel):
        return {"test": evaluate_multiple_choice(model, tokenizer, examples, **kwargs), "routing": None}
    with model.record_routing() as stats:
        test = evaluate_multiple_choice(model, tokenizer, examples, **kwargs)
    return {"test": test, "routing": summarize_routing(stats)}


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
        result = json.loads(result_path.read_text())
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
        atomic_write_json(result_path, failed_result(config, error))
        raise
    result = summarize(config, model, state)
    result.update(evaluate_with_routing(model, tokenizer, config, splits["test"]))
    result["wall_time_s"] = time.perf_counter() - started
    atomic_write_json(result_path, result)
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


def compare(config: ExperimentConfig, *, show_progress: bool = True) -> dict[str, Any]:
    """Run every method of ``config.compare.methods`` and write the combined results and report."""
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    splits = load_splits(config)  # every method trains and tests on the same data
    methods = {
        method: run_or_record_failure(
            config.for_method(method), run_dir / method, show_progress=show_progress, splits=splits
        )
        for method in config.compare.methods
    }
    results = {
        "name": config.name,
        "model": config.model.name,
        "tasks": list(config.data.tasks),
        "split_sizes": {split: len(examples) for split, examples in splits.items()},
        "hardware": hardware_description(),
        "seed": config.train.seed,
        "steps": config.train.steps,
        "wall_time_s": sum(result.get("wall_time_s", 0.0) for result in methods.values()),
        "config": config.to_dict(),
        "methods": methods,
    }
    atomic_write_json(run_dir / "results.json", results)
    write_report(results, run_dir)
    return results

