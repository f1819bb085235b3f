"""``radargate serve``: load the model, bind the socket, run uvicorn until SIGINT or SIGTERM.

The socket is bound before uvicorn starts, so ``--port 0`` gets a free port that can be printed (tests use
it). On SIGTERM the engine stops admitting at once (503), uvicorn stops accepting connections and waits for
the responses under way, the generation thread is stopped, and the process exits 0.
"""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import uvicorn

from radargate.serve.app import create_app
from radargate.serve.engine import Engine, EngineSettings
from radargate.serve.metrics import ServerMetrics


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the engine to stop admitting as soon as a stop signal arrives.

    uvicorn re-raises the signal once it has shut down, so the process would die of it (status -15); a drained
    shutdown is the normal end of a server, so here the handlers are restored and the process exits 0.
    """

    def __init__(self, config: uvicorn.Config, engine: Engine) -> None:
        super().__init__(config)
        self.engine = engine

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig, frame) -> None:
        self.engine.drain()
        super().handle_exit(sig, frame)


@dataclass
class PreparedServer:
    """A loaded model on a bound socket, ready to :meth:`run`."""

    engine: Engine
    server: _DrainingServer
    sock: socket.socket

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    def run(self) -> None:
        """Serve until a stop signal, then drain (see the module docstring)."""
        self.server.run(sockets=[self.sock])


def prepare_server(run_dir: str | Path | None, config_path: str | Path | None, overrides: list[str], *,
                   host: str, port: int, settings: EngineSettings, api_key: str | None,
                   threads: int | None = None) -> PreparedServer:
    """Load the run (or the config's base model) with the harness's loader, build the app, bind ``host:port``;
    ``threads`` sets torch's intra-op threads (a decoding step is many small ops, which extra threads that the
    machine cannot schedule slow down)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads {threads} must be at least 1")
        torch.set_num_threads(threads)
    metrics = ServerMetrics()
    engine = Engine.load(run_dir, config_path, overrides, settings, observer=metrics)
    app = create_app(engine, metrics, api_key=api_key)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port} ({error.strerror}); choose another --host or --port") \
            from None
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=None)
    return PreparedServer(engine, _DrainingServer(config, engine), sock)
