"""The ``model`` section: which base model, in which dtype, quantized or not."""

from __future__ import annotations

from dataclasses import dataclass

from radargate.experiment.loading import DEFAULT_MODEL
from radargate.precision import DTYPES
from radargate.validation import require_bool, require_choice

QUANT_BITS = (4, 8)
QUANT_TYPES = ("nf4", "fp4")


@dataclass
class QuantizationSettings:
    """A frozen base loaded in 4 or 8 bits by bitsandbytes (QLoRA style); experts and gates stay in float32.

    Only the base's linear layers are quantized (embeddings, norms and the output head keep
    ``model.dtype``). Checked here without bitsandbytes, so a config validates on any machine;
    loading the model needs it (``pip install 'radargate[quant]'``).
    """

    bits: int = 4
    """4 (``bnb.nn.Linear4bit``) or 8 (``bnb.nn.Linear8bitLt``, LLM.int8())."""
    quant_type: str = "nf4"
    """4-bit only: ``nf4`` (NormalFloat, QLoRA's) or ``fp4``."""
    compute_dtype: str = "auto"
    """4-bit only: the dtype its matmuls run in; ``auto``: ``model.dtype``."""
    double_quant: bool = False
    """4-bit only: quantize the per-block scales too (QLoRA's double quantization, ~0.4 bit/weight less)."""

    def __post_init__(self) -> None:
        if self.bits not in QUANT_BITS:
            raise ValueError(f"model.quantization.bits={self.bits!r} is not allowed; choose 4 or 8")
        require_choice("model.quantization.quant_type", self.quant_type, QUANT_TYPES)
        require_choice("model.quantization.compute_dtype", self.compute_dtype, ("auto", *DTYPES))
        require_bool("model.quantization.double_quant", self.double_quant)
        four_bit_only = {"quant_type": "nf4", "compute_dtype": "auto", "double_quant": False}
        changed = [name for name, default in four_bit_only.items() if getattr(self, name) != default]
        if self.bits == 8 and changed:
            raise ValueError(f"model.quantization.{changed[0]}={getattr(self, changed[0])!r} applies to 4-bit "
                             "quantization only; drop it or set model.quantization.bits=4")


@dataclass
class ModelSettings:
    name: str = DEFAULT_MODEL
    """The default alias (SmolLM2-135M-Instruct, offline), or any transformers name or path."""
    dtype: str = "float32"
    """Weights' dtype when loaded; mixed precision is ``train.precision``."""
    quantization: QuantizationSettings | None = None
    """A base quantized to 4 or 8 bits by bitsandbytes (``{bits: 4}``); ``None``: not quantized."""

    def __post_init__(self) -> None:
        require_choice("model.dtype", self.dtype, tuple(DTYPES))


