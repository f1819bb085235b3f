"""``radargate export-experts``: a trained mixture's experts as ordinary PEFT LoRA adapters, and its gates.

The run's base model and adapter are loaded as ``radargate eval`` loads them
(``methods.load_trained``); ``MoLoRAModel.export_experts`` writes the files.
"""

from __future__ import annotations

from pathlib import Path

from radargate.experiment.config import BASELINES, ExperimentConfig
from radargate.experiment.methods import load_trained


def export_run_experts(run_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write ``out_dir/expert_<i>/`` (PEFT adapters), ``gate.safetensors`` and ``gate_config.json`` for the
    mixture trained in ``run_dir``; return the adapter folders. ``out_dir`` must not exist yet or be empty."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run folder written by `radargate train` (config.yaml is missing); "
            "give the folder printed as 'run folder:' (output_dir/name)"
        )
    method = ExperimentConfig.load(config_path).method
    if method in BASELINES:
        hint = "its adapter/ folder already is a PEFT adapter" if method == "lora" else "it trained nothing"
        raise ValueError(f"{run_dir} trained method={method!r}, which has no experts ({hint}); "
                         "export-experts needs a mixture run (method = a gate)")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new folder")
    model, _, _ = load_trained(run_dir)
    return model.export_experts(out_dir)
