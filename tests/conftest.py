"""Shared fixtures: tiny randomly initialised models and helpers to randomise adapters.

Adapters start with ``B = 0`` and zero-initialised gate parts, which would hide most bugs, so the
numerical tests first fill every adapter tensor with random values.
"""

from __future__ import annotations

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
from radargate.experiment.loading import load_model_and_tokenizer

VOCAB = 64


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


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
