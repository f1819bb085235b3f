"""Loading the base quantized by bitsandbytes (``model.quantization``), and checking that it can be.

bitsandbytes is optional (``pip install 'radargate[quant]'``). A config that asks for quantization
validates without it; loading the model checks first that the package is there and can quantize
and multiply on the device the model will train on, so a missing package or backend is one error
naming both, not a traceback from deep inside transformers.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch
from accelerate import PartialState
from transformers import BitsAndBytesConfig

from radargate.errors import QuantizationUnavailable
from radargate.experiment.config import QuantizationSettings
from radargate.precision import DTYPES

INSTALL_HINT = "pip install 'radargate[quant]' (or pip install bitsandbytes)"


class _DropInt8CastNotice(logging.Filter):
    """bitsandbytes logs "MatMul8bitLt: inputs will be cast from ... to float16" on every 8-bit matmul whose
    input is not float16 (each layer, each step): expected here, since activations stay in ``model.dtype``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


_INT8_LOGGER = "bitsandbytes.autograd._functions"


def quantized_loading(settings: QuantizationSettings, dtype: torch.dtype) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that load the base in ``settings.bits`` bits on this process's device.

    Raises :class:`QuantizationUnavailable` if bitsandbytes is missing or cannot run there.
    """
    device = PartialState().device
    require_bitsandbytes(settings.bits, device)
    if settings.bits == 8:
        logger = logging.getLogger(_INT8_LOGGER)
        if not any(isinstance(f, _DropInt8CastNotice) for f in logger.filters):
            logger.addFilter(_DropInt8CastNotice())
    return {"quantization_config": bitsandbytes_config(settings, dtype), "device_map": {"": device}}


def disable_cpu_repacking(model: torch.nn.Module) -> None:
    """Keep every 4-bit layer in bitsandbytes' ordinary layout, also in evaluation.

    On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a ``Linear4bit`` for inference on its first
    forward in eval mode without gradients; the repacking fails on small layers ("AssertionError: N
    must be divisible by block_n" for a 16-wide ``k_proj``, "shape '[32, 0]' is invalid" for 32 inputs),
    and a repacked layer passes no gradient to its input (``radargate.layer._no_inference_repacking``).
    Evaluation then uses the kernel that training uses.
    """
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def bitsandbytes_config(settings: QuantizationSettings, dtype: torch.dtype) -> BitsAndBytesConfig:
    """transformers' config for ``settings``; ``compute_dtype: auto`` computes in ``dtype`` (``model.dtype``)."""
    if settings.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute_dtype = dtype if settings.compute_dtype == "auto" else DTYPES[settings.compute_dtype]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=settings.quant_type,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=settings.double_quant,
    )


def require_bitsandbytes(bits: int, device: torch.device) -> None:
    """Quantize a small matrix and multiply by it on ``device`` with bitsandbytes; raise naming what is missing."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationUnavailable(
            f"model.quantization.bits={bits} needs the bitsandbytes package, which is not installed; "
            f"run: {INSTALL_HINT}"
        )
    try:
        import bitsandbytes as bnb
    except Exception as error:  # a broken install fails at import with its own many-line report
        raise QuantizationUnavailable(
            f"model.quantization.bits={bits}: bitsandbytes is installed but cannot be imported "
            f"({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}); "
            f"reinstall it: {INSTALL_HINT}"
        ) from None
    version = getattr(bnb, "__version__", "?")
    supported = getattr(bnb, "supported_torch_devices", set())
    if device.type not in supported:
        raise QuantizationUnavailable(
            f"model.quantization.bits={bits}: bitsandbytes {version} has no backend for device {device.type!r} "
            f"(it supports {', '.join(sorted(supported)) or 'none'}); upgrade it ({INSTALL_HINT}), or drop "
            "model.quantization to train an unquantized base"
        )
    try:
        _probe(bnb, bits, device)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise QuantizationUnavailable(
            f"model.quantization.bits={bits}: bitsandbytes {version} cannot run {bits}-bit layers on {device} "
            f"({type(error).__name__}: {reason}); upgrade it ({INSTALL_HINT}), or drop model.quantization"
        ) from None


def _probe(bnb: Any, bits: int, device: torch.device) -> None:
    """One forward through a small quantized layer of the kind the model will have."""
    weight = torch.linspace(-1.0, 1.0, 64 * 64).reshape(64, 64)
    if bits == 4:
        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32)
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False)
    else:
        layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False)
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    layer = layer.to(device)
    inputs = torch.ones(2, 64, device=device, dtype=torch.float32 if bits == 4 else torch.float16)
    output = layer(inputs)
    if not torch.isfinite(output).all():
        raise RuntimeError("a test multiplication gave non-finite values")
