"""A fresh machine: processes that start at once on an empty cache all get the default model and GSM8K (issue 33),
and a model that would come from an unreachable hub fails in seconds.

Each test here builds the default model's copy from its GGUF file again (tens of seconds), in a cache of its own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from radargate.experiment.data.gsm8k import WHEEL
from radargate.experiment.loading import default_model_cache_path
from tests.test_faults import QUICKSTART, RADARGATE

GGUF_CONVERSION = "Converting and de-quantizing GGUF tensors"
LOAD_BOTH = """
import hashlib, sys
from radargate.experiment.data.gsm8k import load_gsm8k_test
from radargate.experiment.loading import load_model_and_tokenizer
model, tokenizer = load_model_and_tokenizer()
weights = model.get_input_embeddings().weight.detach().numpy().tobytes()
print(hashlib.sha256(weights).hexdigest(), len(tokenizer), len(load_gsm8k_test()))
"""


def start_all(commands: list[list[str]], cache: Path, **env: str) -> list[subprocess.CompletedProcess]:
    """Start every command at once with ``RADARGATE_CACHE=cache`` (one thread each) and wait for all of them."""
    environment = {**os.environ, "RADARGATE_CACHE": str(cache), "OMP_NUM_THREADS": "1", **env}
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=environment) for command in commands]
    try:
        outputs = [process.communicate(timeout=900) for process in processes]
        return [subprocess.CompletedProcess(command, process.returncode, *output)
                for command, process, output in zip(commands, processes, outputs, strict=True)]
    finally:
        for process in processes:
            process.kill()


def leftovers(folder: Path) -> list[str]:
    """Half-written files or folders the loaders would leave behind (their temporary names)."""
    return sorted(path.name for path in folder.rglob("*") if ".tmp" in path.name)


@pytest.mark.serial
def test_two_processes_fill_a_cache_of_links_to_an_empty_one(tmp_path):
    """The test suite's own arrangement on a fresh machine: the cache's model and GSM8K folders link into a cache
    where neither exists yet. Both processes must load the same model and all of GSM8K, fetched once."""
    real, linked = tmp_path / "real", tmp_path / "linked"
    linked.mkdir()
    for name in (default_model_cache_path(real).name, "gsm8k"):
        (linked / name).symlink_to(real / name, target_is_directory=True)
    both = start_all([[sys.executable, "-c", LOAD_BOTH]] * 2, linked)
    for done in both:
        assert done.returncode == 0, done.stderr[-3000:]
    assert both[0].stdout == both[1].stdout and both[0].stdout.split()[2] == "1319"
    assert [GGUF_CONVERSION in done.stderr for done in both].count(True) == 1
    assert (default_model_cache_path(real) / "model.safetensors").is_file()
    assert (real / "gsm8k" / WHEEL).is_file()
    assert leftovers(real) == []


@pytest.mark.serial
def test_two_train_commands_at_once_on_an_empty_cache_both_finish(tmp_path):
    """``radargate study --workers 2`` on a fresh machine: two runs of the default model on GSM8K start together."""
    cache = tmp_path / "cache"
    small = ("--set", "train.steps=2", "--set", "data.max_train_per_task=8", "--set", "data.max_validation_per_task=2",
             "--set", "data.max_test_per_task=2", "--set", "eval.fit_per_task=0",
             "--set", "train.precision=no", "--set", f"output_dir={tmp_path / 'runs'}")
    commands = [[str(RADARGATE), "train", "--config", str(QUICKSTART), *small, "--set", f"name=run{index}"]
                for index in range(2)]
    both = start_all(commands, cache)
    for done in both:
        assert done.returncode == 0, done.stderr[-3000:]
    for index in range(2):
        assert (tmp_path / "runs" / f"run{index}" / "adapter").is_dir()
    # one process converts (transformers' progress bar), the other waits for its copy
    assert [GGUF_CONVERSION in done.stderr for done in both].count(True) == 1
    visible = sorted(path.name for path in cache.iterdir() if not path.name.startswith("."))
    assert visible == sorted([default_model_cache_path(cache).name, "gsm8k"])
    assert leftovers(cache) == []


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


LOAD_FROM_HUB = """
import time
from radargate.experiment.loading import load_model_and_tokenizer
start = time.perf_counter()
try:
    load_model_and_tokenizer("no-such-org/no-such-model")
except OSError as error:
    print(f"{time.perf_counter() - start:.2f}", type(error).__name__)
"""


@pytest.mark.parametrize("endpoint", ["https://no-such-host.invalid", "http://127.0.0.1:{port}"],
                         ids=["no-name-resolution", "connection-refused"])
def test_a_hub_model_without_network_fails_in_seconds(endpoint, tmp_path):
    """huggingface_hub alone retries with back-off for about a minute before it gives up."""
    environment = {**os.environ, "HF_ENDPOINT": endpoint.format(port=closed_port()), "HF_HOME": str(tmp_path)}
    environment.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run([sys.executable, "-c", LOAD_FROM_HUB], capture_output=True, text=True, timeout=300,
                          env=environment)
    seconds, error = done.stdout.split()
    assert error == "OSError", done.stderr[-2000:]
    assert float(seconds) < 10, done.stderr[-2000:]
    assert "cannot be reached" in done.stderr


def test_the_train_command_names_a_hub_model_it_cannot_reach(config_file, tmp_path):
    environment = {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HOME": str(tmp_path / "hf")}
    start = time.perf_counter()
    refused = subprocess.run([str(RADARGATE), "train", "--config", str(config_file), "--set",
                              "model.name=no-such-org/no-such-model"], capture_output=True, text=True, timeout=300,
                             env={**{k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}, **environment})
    elapsed = time.perf_counter() - start
    assert refused.returncode == 2
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("radargate train: error: model.name='no-such-org/no-such-model' could not be loaded")
    assert "Retrying" not in refused.stderr and elapsed < 60
