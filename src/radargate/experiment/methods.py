"""The one place that turns a method name into a model: the base itself, PEFT's LoRA, or a mixture.

``method`` is ``base`` (the untrained model), ``lora`` (PEFT's LoRA at rank ``num_experts * r``,
the same trainable width as the mixture), a gate name (a mixture of LoRA experts with that gate) or a
reading of RadarGate (the ``radar`` gate with its settings, ``config.names.READINGS``). Everything that depends
on which it is (building, loading a trained run, describing and saving the adapter) lives here; a new method
that is not a gate also adds its name to ``config.names``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import SafetensorError, safe_open
from transformers import PreTrainedTokenizerBase

from radargate.experiment.config import ExperimentConfig
from radargate.experiment.loading import DEFAULT_MODEL, load_model_and_tokenizer
from radargate.experiment.quantization import disable_cpu_repacking, quantized_loading
from radargate.files import atomic_write_directory
from radargate.gates import GATES
from radargate.model import MoLoRAModel, get_molora_model
from radargate.peft_interop import ADAPTER_WEIGHTS
from radargate.precision import DTYPES
from radargate.sharding import is_main_process, whole


def trains_anything(config: ExperimentConfig) -> bool:
    """Whether the method has weights to train (the base model has none)."""
    return config.method != "base"


def attach_method(base: torch.nn.Module, config: ExperimentConfig) -> torch.nn.Module:
    """The model ``config.method`` trains: the base itself, PEFT's LoRA, or a mixture."""
    adapter = config.adapter
    if not trains_anything(config):
        return base.requires_grad_(False)
    if config.method == "lora":
        rank = adapter.num_experts * adapter.r
        lora = LoraConfig(
            r=rank,
            lora_alpha=adapter.alpha * adapter.num_experts,  # same alpha / r scale as each expert
            lora_dropout=adapter.dropout,
            target_modules=adapter.target_modules,
        )
        with peft_without_its_own_deprecations():
            return get_peft_model(base, lora)
    return get_molora_model(base, adapter)


def build_model(config: ExperimentConfig) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Load the base model and tokenizer and attach the method's adapter."""
    base, tokenizer = load_base(config)
    return attach_method(base, config), tokenizer


def load_base(config: ExperimentConfig) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """The base model and tokenizer of ``config.model``, quantized if it says so; a name that cannot be loaded
    is a ``ValueError`` naming it (transformers' own ``OSError`` would read as a disk problem)."""
    dtype = DTYPES[config.model.dtype]
    quantization = config.model.quantization
    extra = quantized_loading(quantization, dtype) if quantization is not None else {}
    try:
        base, tokenizer = load_model_and_tokenizer(config.model.name, dtype=dtype, **extra)
    except FileNotFoundError:
        raise
    except OSError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"model.name={config.model.name!r} could not be loaded ({reason}); use a folder saved with "
            f"save_pretrained, a Hugging Face model id (needs the network or the local Hugging Face cache), "
            f"or {DEFAULT_MODEL!r}, the built-in default that works offline"
        ) from None
    if quantization is not None:
        disable_cpu_repacking(base)
    return base, tokenizer


TRAINED_SETTINGS = ("method", "model", "adapter", "train")
"""What made a trained run's weights: evaluation overrides may not change them."""


def model_to_evaluate(run_dir: str | Path | None, config_path: str | Path | None, overrides: Sequence[str] = ()
                      ) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, ExperimentConfig]:
    """What ``radargate eval`` scores: a trained run (``run_dir``), else the untrained base model of a config."""
    if run_dir is not None:
        return load_trained(run_dir, overrides)
    config = ExperimentConfig.load(config_path, overrides).for_method("base")
    return (*build_model(config), config)


def load_trained(run_dir: str | Path, overrides: Sequence[str] = ()
                 ) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, ExperimentConfig]:
    """The model, tokenizer and config of a finished run, from its ``config.yaml`` and ``adapter/``.

    ``overrides`` (``--set``) may change how it is evaluated (data, eval), not what was trained.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: config.yaml is missing")
    config = ExperimentConfig.load(config_path, overrides)
    saved = ExperimentConfig.load(config_path).to_dict()
    requested = config.to_dict()
    changed = [key for key in TRAINED_SETTINGS if requested[key] != saved[key]]
    if changed:
        raise ValueError(f"--set cannot change {', '.join(changed)} of the trained run {run_dir}; only evaluation "
                         "settings (data, eval) may change: to evaluate other settings, train a run with them")
    base, tokenizer = load_base(config)
    adapter_dir = run_dir / "adapter"
    if not trains_anything(config):
        return base.eval(), tokenizer, config
    if not adapter_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} has no trained adapter ({adapter_dir} is missing); finish training first")
    if config.method == "lora":
        return _load_peft_adapter(base, adapter_dir).eval(), tokenizer, config
    return MoLoRAModel.from_pretrained(base, adapter_dir).eval(), tokenizer, config


def _load_peft_adapter(base: torch.nn.Module, adapter_dir: Path) -> PeftModel:
    """PEFT's loader, with a damaged file reported by name instead of a reader's traceback."""
    weights = adapter_dir / ADAPTER_WEIGHTS
    try:
        with safe_open(str(weights), framework="pt") as reader:
            reader.keys()
    except (SafetensorError, OSError) as error:
        raise ValueError(f"adapter file {weights} is missing, truncated or corrupt ({error}); "
                         "train the run again or pick another") from None
    with peft_without_its_own_deprecations():
        return PeftModel.from_pretrained(base, adapter_dir)


@contextlib.contextmanager
def peft_without_its_own_deprecations() -> Iterator[None]:
    """peft's ``PeftModel.__init__`` reads transformers' deprecated ``is_gradient_checkpointing``: a warning
    from peft's code that no caller can avoid, and that would tell a user something of theirs will break."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def describe_adapter(model: torch.nn.Module) -> dict[str, Any]:
    """What the model actually carries, read from its layers (not from the config that asked for it)."""
    if isinstance(model, MoLoRAModel):
        layers = model.molora_layers.values()
        return {
            "kind": "mixture",
            "gates": sorted({name for layer in layers for name, gate in GATES.items() if type(layer.gate) is gate}),
            "num_experts": sorted({layer.experts.num_experts for layer in layers}),
            "r": sorted({layer.experts.r for layer in layers}),
            "layers": len(layers),
        }
    if isinstance(model, PeftModel):
        ranks = {module.r[name] for module in model.modules() if isinstance(getattr(module, "r", None), dict)
                 for name in module.r}
        return {"kind": "peft_lora", "r": sorted(ranks)}
    return {"kind": "none"}


def save_adapter(model: torch.nn.Module, directory: Path) -> None:
    """The final adapter in its library's own format (radargate or PEFT). Every process calls this (FSDP2's
    shards are gathered, a collective); the main process alone writes."""
    if isinstance(model, MoLoRAModel):
        model.save_pretrained(directory)
    elif isinstance(model, PeftModel):
        adapter = {name: whole(tensor) for name, tensor in model.state_dict().items() if "lora_" in name}
        if is_main_process():  # PEFT writes file by file: the folder is swapped in whole
            atomic_write_directory(directory, lambda fresh: model.save_pretrained(fresh, state_dict=adapter))


def generating_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model whose ``generate`` (and continuous batching) runs ``model``'s adapter: a mixture's
    and PEFT's layers sit inside it, swapped in place, so its forward is the adapted model's."""
    if isinstance(model, MoLoRAModel):
        return model.base_model
    if isinstance(model, PeftModel):
        return model.get_base_model()
    return model
