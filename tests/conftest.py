"""Shared fixtures: tiny randomly initialised models and helpers to randomise adapters.

Adapters start with ``B = 0`` and zero-initialised gate parts, which would hide most bugs, so the
numerical tests first fill every adapter tensor with random values.

``make test`` runs the suite in pytest-xdist workers (``--dist loadgroup``, ``pyproject.toml``): tests that
share an expensive module fixture carry one ``xdist_group`` so that one worker builds it once, and tests
marked ``serial`` run while no other test runs (the hooks below).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from radargate import MoLoRAConfig, MoLoRAModel, get_molora_model
from radargate.experiment.data import cache_root
from radargate.experiment.data.bigbench import fetch_bigbench
from radargate.experiment.loading import default_model_cache_path, load_model_and_tokenizer
from tests.bigbench_fixture import write_fixture_sdist

VOCAB = 64
REAL_CACHE_ENV = "RADARGATE_TEST_REAL_CACHE"
"""The user's own cache root, for the tests of facts about the real BIG-bench tasks (``real_cache``)."""


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist each worker (and each process it starts) gets its share of the cores as threads: torch's
    default of one thread per core in every worker oversubscribes the machine."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    if "PYTEST_XDIST_WORKER" in os.environ:  # every worker's temporary folder sits in the session's
        config.stash[MACHINE] = Machine(Path(config.option.basetemp).parent)
        config.add_cleanup(config.stash[MACHINE].close)
    if REAL_CACHE_ENV not in os.environ:  # the first process; xdist's workers and subprocesses inherit it
        config.add_cleanup(use_fixture_cache())


def use_fixture_cache():
    """Point ``RADARGATE_CACHE`` at a fresh cache whose BIG-bench is the stand-in (``tests/bigbench_fixture``).

    The default model and GSM8K stay in the user's cache (linked), so they are fetched once, not per run. On a
    fresh machine the links point at nothing yet: the first worker to need the model or GSM8K fetches it into the
    user's cache (the loaders follow the link), the others wait for it (the loaders' locks). Returns the clean-up.
    """
    real = cache_root().absolute()  # a relative link would point inside the test cache
    folder = Path(tempfile.mkdtemp(prefix="radargate-test-cache-"))
    for shared in (default_model_cache_path(real), real / "gsm8k"):
        (folder / shared.name).symlink_to(shared, target_is_directory=True)
    write_fixture_sdist(folder / "bigbench")
    os.environ[REAL_CACHE_ENV] = str(real)
    os.environ["RADARGATE_CACHE"] = str(folder)
    return lambda: shutil.rmtree(folder, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The ``serial`` tests are one xdist group: one worker runs them back to back."""
    for item in items:
        if is_serial(item):
            item.add_marker(pytest.mark.xdist_group("serial"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """A ``serial`` test, its fixtures' set-up and teardown included, runs with the machine to itself, which its
    worker keeps from one serial test to the next."""
    machine = item.config.stash.get(MACHINE, None)
    if machine is None:
        return (yield)
    if not machine.held:
        machine.hold(whole=is_serial(item))
    try:
        return (yield)
    finally:
        if not (is_serial(item) and nextitem is not None and is_serial(nextitem)):
            machine.release()


def is_serial(item: pytest.Item) -> bool:
    return item.get_closest_marker("serial") is not None


class Machine:
    """An xdist worker's hold on the machine, through two locked files in the session's temporary folder: shared
    for an ordinary test, whole for a ``serial`` one.

    A worker first passes ``turnstile.lock``; for a serial test it keeps it while it waits for ``machine.lock``
    exclusively, so the other workers cannot keep starting tests and starve it.
    """

    def __init__(self, folder: Path) -> None:
        self.turnstile = open(folder / "turnstile.lock", "a")  # noqa: SIM115 (held for the worker's life)
        self.machine = open(folder / "machine.lock", "a")  # noqa: SIM115
        self.held = False

    def hold(self, *, whole: bool) -> None:
        fcntl.flock(self.turnstile, fcntl.LOCK_EX)
        fcntl.flock(self.machine, fcntl.LOCK_EX if whole else fcntl.LOCK_SH)
        if not whole:
            fcntl.flock(self.turnstile, fcntl.LOCK_UN)
        self.held = True

    def release(self) -> None:
        fcntl.flock(self.machine, fcntl.LOCK_UN)
        fcntl.flock(self.turnstile, fcntl.LOCK_UN)
        self.held = False

    def close(self) -> None:
        self.turnstile.close()
        self.machine.close()


MACHINE = pytest.StashKey[Machine]()


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


def tiny_gpt2() -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(config)


def tiny_qwen2() -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return Qwen2ForCausalLM(config)


def tiny_gemma3() -> Gemma3ForCausalLM:
    config = Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        sliding_window=16,
    )
    return Gemma3ForCausalLM(config)


TINY_MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "qwen2": tiny_qwen2, "gemma3": tiny_gemma3}
TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "c_fc"],
           "qwen2": ["q_proj", "v_proj"], "gemma3": ["q_proj", "o_proj"]}


def randomize_adapters(model: nn.Module, generator: torch.Generator, scale: float = 0.5) -> None:
    """Fill every expert and gate tensor with random values (no zeros that hide bugs)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".experts." in name or ".gate." in name:
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
                parameter.copy_(noise * scale)


def molora(kind: str, seed: int = 0, **overrides) -> MoLoRAModel:
    torch.manual_seed(seed)
    config = MoLoRAConfig(**{"num_experts": 3, "r": 4, "target_modules": TARGETS[kind], **overrides})
    return get_molora_model(TINY_MODELS[kind](), config)


def token_batch(seed: int = 0, batch: int = 2, length: int = 12) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator)


PIPELINE_TASKS = ["sports_understanding", "date_understanding"]


@pytest.fixture(scope="session")
def tokenizer():
    return load_model_and_tokenizer()[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def config_file(tmp_path, tiny_model_dir):
    return write_tiny_config(tmp_path, tiny_model_dir)


def write_tiny_config(folder, tiny_model_dir):
    """The pipeline tests' config: the tiny model, two real tasks, a few steps; runs go to ``folder/runs``."""
    values = {
        "name": "tiny", "output_dir": str(folder / "runs"), "method": "radar",
        "model": {"name": str(tiny_model_dir)},
        "data": {"tasks": PIPELINE_TASKS, "max_train_per_task": 16, "max_validation_per_task": 3,
                 "max_test_per_task": 5, "max_length": 128},
        "adapter": {"num_experts": 3, "r": 2, "target_modules": ["q_proj", "v_proj"], "load_balance_weight": 0.01,
                    "dropout": 0.1},
        "train": {"steps": 6, "batch_size": 4, "lr": 0.01, "warmup_steps": 1, "save_every": 2, "precision": "no"},
        "eval": {"batch_size": 8},
        "compare": {"methods": ["lora", "softmax", "radar"]},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="session")
def real_cache() -> Path:
    """The user's cache root with the real BIG-bench sdist; where it cannot be had, the test is skipped saying why."""
    root = Path(os.environ[REAL_CACHE_ENV])
    try:
        fetch_bigbench(root)
    except RuntimeError as error:
        pytest.skip(f"the real BIG-bench sdist is not in {root} and cannot be fetched ({error})")
    return root


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
