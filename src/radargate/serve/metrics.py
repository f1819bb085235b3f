"""``GET /metrics``: the server's Prometheus series, in a registry of their own.

Requests by route and status, queue depth, the batch size of every forward pass, time to first token and
inter-token latency, generated tokens (a counter, and tokens/s over the last few seconds), and each adapted
layer's expert usage share over the recent generated tokens: how often each expert was a token's top choice.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from radargate.serve.engine import Engine

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
RATE_WINDOW_S = 10.0
"""Seconds over which ``radargate_generation_tokens_per_second`` counts tokens."""


class ServerMetrics:
    """The Prometheus series, fed by the engine (as its observer) and by the routes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("radargate_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=self.registry)
        self.batch_size = Histogram("radargate_batch_size", "Requests in each forward pass",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.ttft = Histogram("radargate_time_to_first_token_seconds", "From admission to the first generated token",
                              buckets=LATENCY_BUCKETS, registry=self.registry)
        self.itl = Histogram("radargate_inter_token_latency_seconds", "Between a request's generated tokens",
                             buckets=LATENCY_BUCKETS, registry=self.registry)
        self.generated = Counter("radargate_generated_tokens", "Generated tokens", registry=self.registry)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    # the engine's observer
    def batch(self, requests: int) -> None:
        self.batch_size.observe(requests)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def next_token(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def tokens(self, count: int) -> None:
        self.generated.inc(count)
        with self._lock:
            self._recent.append((time.monotonic(), count))

    def tokens_per_second(self) -> float:
        """Generated tokens per second over the last ``RATE_WINDOW_S`` seconds."""
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
                self._recent.popleft()
            return sum(count for _, count in self._recent) / RATE_WINDOW_S

    def watch(self, engine: Engine) -> None:
        """Add the series read from the engine when scraped: queue depth, running requests, tokens/s, usage."""
        self.registry.register(_EngineCollector(engine, self.tokens_per_second))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    def __init__(self, engine: Engine, tokens_per_second: Callable[[], float]) -> None:
        self.engine = engine
        self.tokens_per_second = tokens_per_second

    def collect(self) -> Iterator[GaugeMetricFamily]:
        engine = self.engine
        yield GaugeMetricFamily("radargate_queue_depth", "Admitted requests waiting for a place in the batch",
                                value=engine.queued_requests)
        yield GaugeMetricFamily("radargate_active_requests", "Admitted requests not yet finished",
                                value=engine.active_requests)
        yield GaugeMetricFamily("radargate_generation_tokens_per_second",
                                f"Generated tokens per second over the last {RATE_WINDOW_S:g} s",
                                value=self.tokens_per_second())
        if engine.routing is None:
            return
        usage = GaugeMetricFamily("radargate_expert_usage_share", "Share of the recent generated tokens for which "
                                  "the expert was the layer's top choice", labels=["layer", "expert"])
        for layer, shares in zip(engine.routing.layer_names, engine.routing.usage_share().tolist(), strict=True):
            for expert, share in enumerate(shares):
                usage.add_metric([layer, str(expert)], share)
        yield usage
