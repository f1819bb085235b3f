"""Each generated token's routing, read from the mixture's routing statistics of the forward pass that chose it.

Continuous batching packs every request's new tokens into one ``[1, T, d]`` forward, and each mixture layer
sees them as ``[T, d]`` rows. After the forward, the row that produced a request's next token (its position in
the pack, which transformers keeps as ``req_id_to_new_token_position``) is cut out of every layer's last-call
weights (``LastCall``) and queued for that request, in token order.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from dataclasses import dataclass

import torch

from radargate.model import MoLoRAModel
from radargate.stats import LastCall

USAGE_WINDOW = 512
"""Generated tokens over which each layer's expert usage share is measured (``/metrics``)."""


@dataclass(frozen=True)
class TokenRouting:
    """One generated token: per adapted layer, the weight of each expert (and RadarGate's rotation angles)."""

    weights: torch.Tensor
    """``[layers, experts]`` gate weights (RadarGate: the StretchGate magnitudes)."""
    theta: torch.Tensor | None
    """``[layers, experts]`` RadarGate's rotation angles in radians; ``None`` for other gates."""

    def to_json(self, digits: int = 4) -> dict[str, list[list[float]]]:
        result = {"weights": _rounded(self.weights, digits)}
        if self.theta is not None:
            result["theta"] = _rounded(self.theta, digits)
        return result


def _rounded(values: torch.Tensor, digits: int) -> list[list[float]]:
    return [[round(value, digits) for value in row] for row in values.tolist()]


class RoutingRecorder:
    """Queues each open request's per-token routing; keeps the recent generated tokens' top choices for metrics."""

    def __init__(self, model: MoLoRAModel) -> None:
        self.layer_names = list(model.molora_layers)
        self.num_experts = model.molora_config.num_experts
        self._model = model
        self._stack = contextlib.ExitStack()
        self._stats = {}
        self._pending: dict[str, deque[TokenRouting]] = {}
        self._recent_top: deque[torch.Tensor] = deque(maxlen=USAGE_WINDOW)
        self._lock = threading.Lock()

    def start(self) -> None:
        """Make every mixture layer keep its last call's weights (until :meth:`stop`)."""
        self._stats = self._stack.enter_context(self._model.record_routing(LastCall))

    def stop(self) -> None:
        self._stack.close()

    def open(self, request_id: str) -> None:
        self._pending[request_id] = deque()

    def close(self, request_id: str) -> None:
        self._pending.pop(request_id, None)

    def pop(self, request_id: str) -> TokenRouting | None:
        """The routing of the request's oldest token not yet taken (``None`` if none is queued)."""
        queue = self._pending.get(request_id)
        return queue.popleft() if queue else None

    def harvest(self, positions: dict[str, int]) -> None:
        """After a forward: cut each request's row (``positions``: request id -> row in the pack) out of every
        layer's last call. Runs on the generation thread, before the tokens are handed to the requests."""
        if not positions or not self._stats:
            return
        rows = torch.tensor([int(row) for row in positions.values()])
        stats = [self._stats[name] for name in self.layer_names]
        weights = torch.stack([layer.weights[rows] for layer in stats], dim=1).float()  # [requests, layers, n]
        has_theta = stats[0].theta is not None
        theta = torch.stack([layer.theta[rows] for layer in stats], dim=1).float() if has_theta else None
        for index, request_id in enumerate(positions):
            queue = self._pending.get(request_id)
            if queue is not None:
                queue.append(TokenRouting(weights[index], None if theta is None else theta[index]))
        with self._lock:
            self._recent_top.extend(weights.argmax(dim=-1))

    def usage_share(self) -> torch.Tensor:
        """``[layers, experts]``: how often each expert was a layer's top choice over the recent generated tokens."""
        with self._lock:
            recent = list(self._recent_top)
        if not recent:
            return torch.zeros(len(self.layer_names), self.num_experts)
        top = torch.stack(recent)  # [tokens, layers]
        counts = torch.nn.functional.one_hot(top, self.num_experts).sum(dim=0).float()
        return counts / len(recent)
