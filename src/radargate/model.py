"""`MoLoRAModel`: attach, run, save and load mixtures of LoRA experts on any model.

``get_molora_model(model, config)`` freezes the base model, swaps each target linear layer for a
``MoLoRALinear`` (in place, so the model's own forward and ``generate`` work unchanged) and wraps
it. Calling the wrapper with ``labels=`` adds the weighted auxiliary losses to the model's loss
and reports them separately (``output["lm_loss"]``, ``output["aux_losses"]``). The wrapper's
``forward`` shows the base model's arguments to ``inspect.signature`` (plus ``with_aux``), so
tools that read them, such as the Trainer's ``remove_unused_columns``, see ``input_ids``,
``labels``... and not ``*args, **kwargs``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from radargate.checkpoint import (
    CONFIG_METADATA_KEY,
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_tensors,
    save_tensors,
)
from radargate.config import MoLoRAConfig
from radargate.files import atomic_write_directory, atomic_write_json, atomic_write_text
from radargate.frozen import FrozenCache
from radargate.injection import attach_experts
from radargate.layer import Conv1D, MoLoRALinear
from radargate.peft_interop import PeftAdapter, read_peft_adapter, write_peft_adapter
from radargate.sharding import copy_whole_into, whole
from radargate.sharding import is_main_process as is_main
from radargate.stats import LastCall, RoutingStats

Recorder = TypeVar("Recorder", RoutingStats, LastCall)


def get_molora_model(model: nn.Module, config: MoLoRAConfig) -> MoLoRAModel:
    """Freeze ``model``, attach experts and a gate to its target layers, and wrap it."""
    return MoLoRAModel(model, config)


class _ForwardWithBaseSignature:
    """A method whose bound form carries the signature of the base model's ``forward`` plus its own
    keyword-only arguments (``with_aux``), so that ``inspect.signature(model.forward)`` lists the
    arguments the model really accepts.

    The signature is computed once per base model class; an instance attribute ``forward`` (set by
    accelerate or TRL when they wrap the forward) still takes precedence, as for any method.
    """

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        functools.update_wrapper(self, function)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self.function
        return types.MethodType(_signed_forward(self.function, type(instance.base_model)), instance)


@functools.cache
def _signed_forward(function: Callable[..., Any], base_class: type) -> Callable[..., Any]:
    """``function`` with ``__signature__``: ``self``, the base class's forward arguments, and the keyword-only
    arguments of ``function`` itself before the base's ``**kwargs``."""

    @functools.wraps(function)
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return function(self, *args, **kwargs)

    own = inspect.signature(function).parameters
    base = list(inspect.signature(base_class.forward).parameters.values())[1:]  # without self
    names = {parameter.name for parameter in base}
    extra = [p for p in own.values() if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in names]
    variadic = [p for p in base if p.kind is inspect.Parameter.VAR_KEYWORD]
    fixed = [p for p in base if p.kind is not inspect.Parameter.VAR_KEYWORD]
    forward.__signature__ = inspect.Signature([own["self"], *fixed, *extra, *variadic])
    return forward


class MoLoRAModel(nn.Module):
    """A base model whose target layers carry gated LoRA experts; attributes fall through to it."""

    def __init__(self, base_model: nn.Module, config: MoLoRAConfig) -> None:
        super().__init__()
        if isinstance(base_model, MoLoRAModel):
            raise ValueError("the model already carries experts; pass its base_model instead")
        self.base_model = base_model
        self.molora_config = config
        base_model.requires_grad_(False)
        self._layers = attach_experts(base_model, config)
        self._aux_loss_apart = False
        for layer in self._layers.values():
            layer.experts.requires_grad_(config.train_experts)
            layer.gate.requires_grad_(True)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    @property
    def molora_layers(self) -> dict[str, MoLoRALinear]:
        """Module name (inside the base model) -> mixture layer."""
        return dict(self._layers)

    # -- running ---------------------------------------------------------------------------------

    @_ForwardWithBaseSignature
    def forward(self, *args: Any, with_aux: bool | None = None, **kwargs: Any) -> Any:
        """The base model's forward, plus the auxiliary losses that have a positive weight.

        They are computed when ``with_aux`` is true (default: when ``labels=`` is given) and
        reported as ``output["aux_losses"]`` (per loss, detached) and ``output["aux_loss"]`` (the
        weighted sum, differentiable); with labels, ``output.loss`` includes that sum (except inside
        :meth:`aux_loss_apart`) and ``output["lm_loss"]`` keeps the model's own loss.
        """
        if with_aux is None:
            with_aux = kwargs.get("labels") is not None
        weights = self.molora_config.aux_loss_weights() if with_aux else {}
        for layer in self._layers.values():
            layer.aux_names = tuple(weights)
            layer.aux_losses = {}
        output = self.base_model(*args, **kwargs)
        if weights and isinstance(output, dict):
            aux = self.aux_losses()
            output["aux_losses"] = {name: value.detach() for name, value in aux.items()}
            output["aux_loss"] = self.weighted_aux_loss(aux)
            if output.get("loss") is not None:
                output["lm_loss"] = output["loss"]
                if not self._aux_loss_apart:
                    output["loss"] = output["loss"] + output["aux_loss"]
        return output

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Each auxiliary loss of the last forward, averaged over the layers that computed it."""
        per_name: dict[str, list[torch.Tensor]] = {}
        for layer in self._layers.values():
            for name, value in layer.aux_losses.items():
                per_name.setdefault(name, []).append(value)
        return {name: torch.stack(values).mean() for name, values in per_name.items()}

    def weighted_aux_loss(self, aux: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``sum_name weight * loss`` over ``aux`` (default: the last forward's :meth:`aux_losses`)."""
        aux = self.aux_losses() if aux is None else aux
        weights = self.molora_config.aux_loss_weights()
        return sum((weights[name] * value for name, value in aux.items() if name in weights), torch.zeros(()))

    @contextlib.contextmanager
    def aux_loss_apart(self) -> Iterator[None]:
        """Inside the block ``output.loss`` is the model's own loss alone; the auxiliary losses are still
        computed and returned. For a trainer that adds them itself, scaled for gradient accumulation
        (``radargate.integrations.MoLoRATrainer``)."""
        self._aux_loss_apart = True
        try:
            yield
        finally:
            self._aux_loss_apart = False

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        for layer in self._layers.values():
            layer.aux_names = ()
        return self.base_model.generate(*args, **kwargs)

    def gradient_checkpointing_enable(self, **checkpoint_kwargs: Any) -> None:
        """Activation checkpointing in the base model, non-reentrant by default so that gradients
        reach the experts although the base (and its input embeddings) are frozen."""
        checkpoint_kwargs.setdefault("use_reentrant", False)
        enable = getattr(self.base_model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs=checkpoint_kwargs)
        else:
            self.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs)

    def compile_layers(self, **compile_kwargs: Any) -> None:
        """``torch.compile`` every mixture layer in place (``dynamic=True`` by default: the number of
        tokens changes from batch to batch). The base model's own code is left as it is."""
        compile_kwargs.setdefault("dynamic", True)
        for layer in self._layers.values():
            layer.compile(**compile_kwargs)

    @contextlib.contextmanager
    def record_routing(self, recorder: Callable[[int], Recorder] = RoutingStats) -> Iterator[dict[str, Recorder]]:
        """Record routing per layer while inside the block: ``RoutingStats`` accumulates statistics, ``LastCall``
        keeps only the last call's per-token weights and angles (``recorder`` is called with ``num_experts``)."""
        stats = {name: recorder(layer.experts.num_experts) for name, layer in self._layers.items()}
        for name, layer in self._layers.items():
            layer.routing_stats = stats[name]
        try:
            yield stats
        finally:
            for layer in self._layers.values():
                layer.routing_stats = None

    @contextlib.contextmanager
    def force_expert(self, index: int) -> Iterator[None]:
        """Inside the block every layer uses expert ``index`` alone, at full weight (the gate is bypassed):
        what that expert does by itself, and what ``export_experts`` writes as its PEFT adapter."""
        self._check_expert_index(index)
        for layer in self._layers.values():
            layer.forced_expert = index
        try:
            yield
        finally:
            for layer in self._layers.values():
                layer.forced_expert = None

    @contextlib.contextmanager
    def weights_fixed(self) -> Iterator[None]:
        """Promise that nothing changes the adapters' weights inside the block (serving): tensors derived from
        them (``frozen.py``) are then reused without checking the weights on every call."""
        found = (getattr(module, "frozen", None) for module in self.modules())
        caches = [cache for cache in found if isinstance(cache, FrozenCache)]
        for cache in caches:
            cache.weights_fixed = True
        try:
            yield
        finally:
            for cache in caches:
                cache.weights_fixed = False

    @contextlib.contextmanager
    def disable_experts(self) -> Iterator[None]:
        """Run the plain base model inside the block."""
        for layer in self._layers.values():
            layer.enabled = False
        try:
            yield
        finally:
            for layer in self._layers.values():
                layer.enabled = True

    # -- parameters ------------------------------------------------------------------------------

    def parameter_counts(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def print_trainable_parameters(self) -> None:
        trainable, total = self.parameter_counts()
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Every expert and gate tensor, keyed ``<module name>.<parameter>``; no base weights. Tensors that FSDP2
        sharded are gathered whole, so under FSDP2 every process must call this (``radargate.sharding``)."""
        return {key: whole(value) for key, value in self._adapter_tensors().items()}

    def _adapter_tensors(self) -> dict[str, torch.Tensor]:
        """``adapter_state_dict``'s tensors as the layers hold them: sharing storage with the parameters."""
        return {
            f"{name}.{key}": value
            for name, layer in self._layers.items()
            for key, value in layer.state_dict().items()
            if not key.startswith("base_layer.")
        }

    def load_adapter_state_dict(self, tensors: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Copy expert and gate tensors in; any missing, extra or misshapen tensor is an error."""
        own = self._adapter_tensors()
        problems = [f"missing {key}" for key in own.keys() - tensors.keys()]
        problems += [f"unexpected {key}" for key in tensors.keys() - own.keys()]
        problems += [
            f"{key} has shape {list(tensors[key].shape)} in the checkpoint but {list(value.shape)} in the model"
            for key, value in own.items()
            if key in tensors and tensors[key].shape != value.shape
        ]
        if problems:
            shown = "; ".join(sorted(problems)[:5])
            raise ValueError(
                f"{source} does not fit this base model ({len(problems)} problem(s)): {shown}. "
                "Was it saved from a different base model or config?"
            )
        with torch.no_grad():
            for key, value in own.items():
                copy_whole_into(value, tensors[key])

    # -- checkpoints -----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, *, is_main_process: bool | None = None) -> None:
        """Write ``molora_model.safetensors`` and ``molora_config.json``, each atomically.

        In a ``torch.distributed`` job only ``is_main_process`` writes (default: process 0); under FSDP2 every
        process must call this, since the sharded tensors are gathered first."""
        directory = Path(directory)
        config_json = self.molora_config.to_json()
        tensors = self.adapter_state_dict()
        if not (is_main() if is_main_process is None else is_main_process):
            return
        save_tensors(directory / WEIGHTS_NAME, tensors, {CONFIG_METADATA_KEY: config_json})
        atomic_write_text(directory / CONFIG_NAME, config_json + "\n")

    @classmethod
    def from_pretrained(
        cls, base_model: nn.Module, directory: str | Path, *, is_trainable: bool = False
    ) -> MoLoRAModel:
        """Attach the experts and gates saved in ``directory`` to ``base_model``.

        Frozen and in eval mode unless ``is_trainable``, as in PEFT.
        """
        config, tensors, path = _read_checkpoint(directory)
        model = cls(base_model, config)
        model.load_adapter_state_dict(tensors, source=f"checkpoint {path}")
        if not is_trainable:
            model.requires_grad_(False)
            model.eval()
        return model

    def load_pretrained_weights(self, directory: str | Path) -> None:
        """Copy the experts and gates that ``save_pretrained`` wrote in ``directory`` into this model, which
        must have the same config (how a trainer resumes from its checkpoint)."""
        config, tensors, path = _read_checkpoint(directory)
        if config != self.molora_config:
            saved, own = config.to_dict(), self.molora_config.to_dict()
            changed = [f"{key}: {saved[key]!r} here {own[key]!r}" for key in sorted(own) if saved[key] != own[key]]
            raise ValueError(f"checkpoint {path} was saved with another MoLoRAConfig ({'; '.join(changed)})")
        self.load_adapter_state_dict(tensors, source=f"checkpoint {path}")

    # -- PEFT adapters as experts ----------------------------------------------------------------

    @classmethod
    def from_peft_adapters(
        cls,
        base_model: nn.Module,
        adapter_dirs: Sequence[str | Path],
        config: MoLoRAConfig | None = None,
    ) -> MoLoRAModel:
        """One frozen expert per PEFT LoRA adapter, so only the gate trains (MoLE / X-LoRA).

        Without ``config``, the mixture targets the adapters' modules with a softmax gate, rank the
        largest adapter rank, and ``train_experts=False``. Pass a config with
        ``train_experts=True`` to fine-tune the experts too.
        """
        adapters = [read_peft_adapter(path) for path in adapter_dirs]
        if config is None:
            rank = max(adapter.r for adapter in adapters)
            config = MoLoRAConfig(
                num_experts=len(adapters),
                r=rank,
                alpha=float(rank),
                target_modules=sorted({m for a in adapters for m in a.factors}),
                train_experts=False,
            )
        model = cls(base_model, config)
        model.load_peft_experts(adapters)
        return model

    def load_peft_experts(self, adapters: Sequence[PeftAdapter]) -> None:
        """Put adapter ``i`` into expert slot ``i`` of every layer (zero where it has no factors).

        A smaller adapter rank is zero-padded; the adapter's scale is folded into ``B``.
        """
        n = self.molora_config.num_experts
        if len(adapters) != n:
            raise ValueError(f"got {len(adapters)} adapters for num_experts={n}; give exactly one per expert")
        for adapter in adapters:
            self._check_adapter_fits(adapter)
        with torch.no_grad():
            for name, layer in self._layers.items():
                for slot, adapter in enumerate(adapters):
                    _load_expert(layer, slot, adapter, name)

    # -- experts out, as PEFT adapters -----------------------------------------------------------

    def _check_expert_index(self, index: int) -> None:
        n = self.molora_config.num_experts
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
            raise ValueError(f"expert index={index!r} is out of range; choose 0 <= index < num_experts={n}")

    def expert_adapter(self, index: int, path: str | Path) -> PeftAdapter:
        """Expert ``index`` of every layer as one LoRA adapter (to be written at ``path``): ``A_i`` and ``B_i``
        with the mixture's ``r`` and scale, so its delta is ``s B_i A_i x``, the layer's under
        :meth:`force_expert`. The inverse of :meth:`load_peft_experts`."""
        self._check_expert_index(index)
        factors = {
            name: (layer.experts.A[index].detach(), layer.experts.B[index].detach())
            for name, layer in self._layers.items()
        }
        config = self.molora_config
        return PeftAdapter(path=Path(path), r=config.r, scaling=config.scaling, target_modules=sorted(factors),
                           factors=factors)

    def export_experts(self, directory: str | Path) -> list[Path]:
        """Write each expert as a PEFT LoRA adapter folder ``directory/expert_<i>/`` (loadable with
        ``peft.PeftModel.from_pretrained(base, directory / "expert_0")``), and the gates as
        ``gate.safetensors`` (``<module>.gate.<tensor>``) with ``gate_config.json`` (the gate, the experts'
        folders, the modules and the whole ``MoLoRAConfig``). Returns the adapter folders."""
        directory = Path(directory)
        config = self.molora_config
        base = self.base_model
        can_generate = getattr(base, "can_generate", None)
        layers = self._layers.values()
        peft_settings = {
            "fan_in_fan_out": bool(Conv1D) and any(isinstance(layer.base_layer, Conv1D) for layer in layers),
            "task_type": "CAUSAL_LM" if callable(can_generate) and can_generate() else None,
            "base_model_name_or_path": getattr(getattr(base, "config", None), "name_or_path", None) or None,
        }
        names = [f"expert_{index}" for index in range(config.num_experts)]
        gate_tensors = {
            f"{name}.gate.{key}": value
            for name, layer in self._layers.items()
            for key, value in layer.gate.state_dict().items()
        }

        def write(fresh: Path) -> None:  # the whole folder appears at once, or the previous one stays
            for index, name in enumerate(names):
                write_peft_adapter(self.expert_adapter(index, fresh / name), **peft_settings)
            save_tensors(fresh / GATE_WEIGHTS, gate_tensors, {CONFIG_METADATA_KEY: config.to_json()})
            atomic_write_json(fresh / GATE_CONFIG, {
                "gate": config.gate,
                "num_experts": config.num_experts,
                "experts": names,
                "modules": sorted(self._layers),
                "weights": GATE_WEIGHTS,
                "molora_config": config.to_dict(),
            })

        atomic_write_directory(directory, write)
        return [directory / name for name in names]

    def _check_adapter_fits(self, adapter: PeftAdapter) -> None:
        foreign = sorted(set(adapter.factors) - set(self._layers))
        if foreign:
            raise ValueError(
                f"adapter {adapter.path} adapts modules that carry no experts here: {foreign[:5]}; "
                "add them to target_modules"
            )
        if adapter.r > self.molora_config.r:
            raise ValueError(f"adapter {adapter.path} has rank r={adapter.r} > the experts' r={self.molora_config.r}")


GATE_WEIGHTS = "gate.safetensors"
GATE_CONFIG = "gate_config.json"


def _read_checkpoint(directory: str | Path) -> tuple[MoLoRAConfig, dict[str, torch.Tensor], Path]:
    path = Path(directory) / WEIGHTS_NAME
    tensors, metadata = load_tensors(path)
    if CONFIG_METADATA_KEY not in metadata:
        raise ValueError(f"{path} is not a radargate checkpoint: its metadata has no {CONFIG_METADATA_KEY!r}")
    return MoLoRAConfig.from_json(metadata[CONFIG_METADATA_KEY]), tensors, path


def _load_expert(layer: MoLoRALinear, slot: int, adapter: PeftAdapter, name: str) -> None:
    experts = layer.experts
    experts.A[slot].zero_()
    experts.B[slot].zero_()
    if name not in adapter.factors:
        return
    a, b = adapter.factors[name]
    if a.shape[1] != experts.A.shape[-1] or b.shape[1] != experts.B.shape[-1]:
        raise ValueError(
            f"adapter {adapter.path} module {name}: factors {list(a.shape)} x {list(b.shape)} do not fit "
            f"d_in={experts.A.shape[-1]}, d_out={experts.B.shape[-1]}"
        )
    experts.A[slot, : adapter.r] = a
    experts.B[slot, : adapter.r] = b * (adapter.scaling / experts.scaling)
