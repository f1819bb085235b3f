"""Several methods side by side, with the same data, budget and seed.

``compare`` keeps each method in ``<run_dir>/<method>/`` (one run each, ``radargate.experiment.run``);
a method whose ``result.json`` exists is not run again, and an unfinished one resumes from its
checkpoint, so an interrupted comparison loses nothing. The combined ``results.json``, ``report.md``
and plots are rebuilt at the end. A method whose training diverges is recorded as failed and the
others go on.
"""

from __future__ import annotations

from typing import Any

from radargate.experiment.config import ExperimentConfig
from radargate.experiment.data.sources import load_splits
from radargate.experiment.report.comparison import write_report
from radargate.experiment.run import run_or_record_failure
from radargate.files import atomic_write_json
from radargate.hardware import hardware_description


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
        "tasks": config.data.task_names,
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

