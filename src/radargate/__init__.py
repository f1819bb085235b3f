"""radargate: mixtures of LoRA experts with the rotation-based RadarGate and baseline gates."""

from __future__ import annotations

from radargate import _moved
from radargate.config import MoLoRAConfig
from radargate.gates import GATES, get_gate
from radargate.layer import MoLoRALinear
from radargate.model import MoLoRAModel, get_molora_model

__version__ = "0.1.0"

_moved.install()  # the harness's old module names, for one release

__all__ = ["GATES", "MoLoRAConfig", "MoLoRALinear", "MoLoRAModel", "__version__", "get_gate", "get_molora_model"]
