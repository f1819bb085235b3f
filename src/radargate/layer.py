"""`MoLoRALinear`: a frozen base linear layer plus a gated mixture of LoRA experts.

Nothing here is model-specific: the base layer is any ``nn.Linear`` or transformers' GPT-2
``Conv1D`` (input ``[..., d_in]`` to output ``[..., d_out]``), and it is called as it was. That
includes bitsandbytes' quantized ``Linear4bit`` and ``Linear8bitLt`` (subclasses of ``nn.Linear``
whose ``weight`` holds packed integers): the experts then train in float32 beside a frozen 4- or
8-bit base, as in QLoRA.
"""

from __future__ import annotations

import torch
from torch import nn

from radargate.config import MoLoRAConfig
from radargate.experts import LoRAExperts
from radargate.gates import get_gate
from radargate.losses import auxiliary_losses
from radargate.precision import float32_if_half
from radargate.stats import LastCall, RoutingStats

try:  # transformers is a dependency, but the layer also serves plain PyTorch models
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()  # type: ignore[assignment,misc]

SUPPORTED_LAYERS = (nn.Linear, Conv1D)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """``(d_in, d_out)`` of a supported base layer (``Conv1D`` stores ``weight: [d_in, d_out]``)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if Conv1D and isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    raise TypeError(
        f"cannot attach experts to {type(module).__name__}; supported layers are nn.Linear and "
        "transformers' Conv1D"
    )


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """Adapters train in float32 under a half-precision or quantized base (as PEFT does), else the base dtype.

    A quantized base stores integers (bitsandbytes: ``uint8`` for 4-bit, ``int8`` for 8-bit), which
    say nothing about the precision it computes in.
    """
    if not weight.dtype.is_floating_point:
        return torch.float32
    return float32_if_half(weight.dtype)


def _no_inference_repacking(base_layer: nn.Module) -> None:
    """Stop bitsandbytes from repacking a 4-bit base for CPU inference, which later training cannot undo.

    On CPUs with AVX512-BF16, ``Linear4bit`` rewrites its weight into an inference-only layout on
    the first forward in eval mode without gradients (an evaluation). Its inference kernel has no
    backward (bitsandbytes 0.50.2): after that, training through a layer without bias gives its input
    no gradient at all, silently (the experts of earlier layers learn from a wrong gradient), and
    through one with bias fails ("a view of a leaf Variable that requires grad is being used in an
    in-place operation"). Training alternates with evaluation, so the repacking is switched off for
    the layers that carry experts; evaluation then runs the ordinary kernel.
    """
    if getattr(base_layer, "support_avx512bf16_for_cpu", False):
        if getattr(getattr(base_layer.weight, "quant_state", None), "packing_format_for_cpu", False):
            raise ValueError(
                f"this {type(base_layer).__name__} was already repacked by bitsandbytes for CPU inference, "
                "a layout that cannot train; attach experts before running the quantized model in eval mode"
            )
        base_layer.support_avx512bf16_for_cpu = False


class MoLoRALinear(nn.Module):
    """``y = base(x) + gate(x, experts)``, the experts and gate being the only trainable parts."""

    def __init__(self, base_layer: nn.Module, config: MoLoRAConfig) -> None:
        super().__init__()
        in_features, out_features = linear_shape(base_layer)
        _no_inference_repacking(base_layer)
        weight = base_layer.weight
        dtype, device = adapter_dtype(weight), weight.device
        self.base_layer = base_layer
        self.experts = LoRAExperts(
            num_experts=config.num_experts,
            in_features=in_features,
            out_features=out_features,
            r=config.r,
            scaling=config.scaling,
            dtype=dtype,
            device=device,
        )
        self.gate = get_gate(config.gate)(config=config, in_features=in_features, dtype=dtype, device=device)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.enabled = True
        self.aux_names: tuple[str, ...] = ()
        """Auxiliary losses to compute on each call; set by the model while labels are given."""
        self.aux_losses: dict[str, torch.Tensor] = {}
        self.routing_stats: RoutingStats | LastCall | None = None
        """Set to a ``RoutingStats`` to accumulate routing statistics on every call (``LastCall``: keep the last)."""
        self.forced_expert: int | None = None
        """Set to an expert's index to bypass the gate: the layer is then ``base(x) + s B_i A_i x``."""

    @property
    def in_features(self) -> int:
        return self.experts.A.shape[-1]

    @property
    def out_features(self) -> int:
        return self.experts.B.shape[-1]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if not self.enabled:
            return result
        tokens = x.reshape(-1, x.shape[-1]).to(self.experts.A.dtype)
        codes = self.experts.codes(self.dropout(tokens))
        if self.forced_expert is not None:
            one_hot = codes.new_zeros(codes.shape[:2])
            one_hot[:, self.forced_expert] = 1
            return result + self.experts.mix(codes, one_hot).view(*x.shape[:-1], self.out_features).to(result.dtype)
        recorder = self.routing_stats
        output = self.gate(tokens, codes, self.experts, with_stats=recorder is not None and recorder.wants_geometry)
        if self.aux_names:
            self.aux_losses = auxiliary_losses(output, codes, self.experts, self.aux_names)
        if recorder is not None:
            recorder.update(output)
        return result + output.delta.view(*x.shape[:-1], self.out_features).to(result.dtype)

    def extra_repr(self) -> str:
        return f"experts={self.experts.num_experts}, r={self.experts.r}, gate={type(self.gate).__name__}"
