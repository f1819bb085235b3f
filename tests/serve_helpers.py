"""Live servers for the serving tests: ``radargate serve ... --port 0`` as a subprocess on loopback, and the tiny
runs they serve (a tiny random Llama with SmolLM2's tokenizer and chat template, trained a few steps)."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from radargate.cli import main

RADARGATE = str(Path(sys.executable).parent / "radargate")
API_KEY = "test-key-1234"
CONTEXT = 1024
"""The tiny model's context: room for the long requests that hold the queue full."""
START_TIMEOUT_S = 180


def save_tiny_model(path: Path, tokenizer) -> Path:
    """A tiny random Llama with the default model's tokenizer (so its chat template) and a 1024-token context."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_config(folder: Path, model_dir: Path) -> Path:
    values = {
        "name": "serve", "output_dir": str(folder / "runs"), "method": "radar",
        "model": {"name": str(model_dir)},
        "data": {"tasks": ["sports_understanding"], "max_train_per_task": 8, "max_validation_per_task": 2,
                 "max_test_per_task": 2, "max_length": 128},
        "adapter": {"num_experts": 3, "r": 2, "target_modules": ["q_proj", "v_proj"]},
        "train": {"steps": 2, "batch_size": 4, "lr": 0.05, "warmup_steps": 0, "save_every": 2, "precision": "no"},
        "eval": {"batch_size": 8, "fit_per_task": 0},
    }
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def train_run(config: Path, method: str) -> Path:
    """A tiny run of ``method`` in ``<output_dir>/<method>``, trained with the CLI as a user would."""
    assert main(["train", "--config", str(config), "--set", f"method={method}", "--set", f"name={method}"]) == 0
    return Path(yaml.safe_load(config.read_text())["output_dir"]) / method


class LiveServer:
    """``radargate serve ARGS --port 0``, its URL read from the line where it says where it listens."""

    def __init__(self, *args: str, api_key: str | None = API_KEY) -> None:
        # one thread: the tiny model's steps are small ops, which a busy 2-core machine runs faster on one
        command = [RADARGATE, "serve", *args, "--port", "0", "--threads", "1"]
        command += ["--api-key", api_key] if api_key else []
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, args=(self.process.stdout, self.lines.put), daemon=True).start()
        self._stderr_reader = threading.Thread(target=self._read, args=(self.process.stderr, self.stderr.append),
                                               daemon=True)
        self._stderr_reader.start()
        self.url = self._wait_for_url()

    @staticmethod
    def _read(stream, sink) -> None:
        for line in stream:
            sink(line)

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.process.poll() is None:
                    continue
                self._stderr_reader.join(timeout=10)
                raise RuntimeError(f"the server exited with {self.process.returncode}: {''.join(self.stderr)}") \
                    from None
            found = re.search(r"listening on (http://\S+) ", line)
            if found:
                return found.group(1)
        self.process.kill()
        raise RuntimeError(f"the server did not start in {START_TIMEOUT_S} s: {''.join(self.stderr)[-2000:]}")

    def terminate(self, timeout: float = 120) -> int:
        """SIGTERM, then wait for the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
