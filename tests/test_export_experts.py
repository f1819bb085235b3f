"""Experts out as ordinary PEFT LoRA adapters (`export_experts`, `radargate export-experts`); run model cards."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open

from radargate import MoLoRAConfig, MoLoRAModel, get_molora_model
from radargate.cli import main
from radargate.model import GATE_CONFIG, GATE_WEIGHTS
from radargate.peft_interop import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from tests.conftest import TARGETS, TINY_MODELS, randomize_adapters, token_batch


def float64_mixture(kind: str, generator: torch.Generator, **overrides):
    """A mixture on a float64 tiny model with random experts and gate; also returns an untouched copy of the base."""
    torch.manual_seed(0)
    base = TINY_MODELS[kind]().double().eval()
    clean = copy.deepcopy(base)
    config = MoLoRAConfig(**{"num_experts": 3, "r": 4, "alpha": 6.0, "target_modules": TARGETS[kind], **overrides})
    model = get_molora_model(base, config).eval()
    randomize_adapters(model, generator, scale=0.3)
    return model, clean


@pytest.mark.parametrize(("kind", "gate"), [("llama", "radar"), ("gpt2", "topk")])
def test_each_exported_expert_under_peft_equals_the_mixture_forced_to_it(tmp_path, generator, kind, gate):
    model, clean_base = float64_mixture(kind, generator, gate=gate)
    folders = model.export_experts(tmp_path)
    assert [folder.name for folder in folders] == ["expert_0", "expert_1", "expert_2"]
    ids = token_batch(seed=5)
    with torch.no_grad():
        plain = clean_base(input_ids=ids).logits
        for index, folder in enumerate(folders):
            peft_model = PeftModel.from_pretrained(copy.deepcopy(clean_base), folder).eval()
            with model.force_expert(index):
                forced = model(input_ids=ids).logits
            expected = peft_model(input_ids=ids).logits
            assert expected.dtype == torch.float64
            assert (expected - plain).abs().max() > 1e-3  # the adapter does something
            torch.testing.assert_close(forced, expected, rtol=1e-12, atol=1e-12)


def test_exported_files_are_standard_peft_adapters_and_the_gates(tmp_path, generator):
    model, _ = float64_mixture("gpt2", generator, gate="radar")
    model.export_experts(tmp_path)
    settings = json.loads((tmp_path / "expert_1" / ADAPTER_CONFIG).read_text())
    assert settings["peft_type"] == "LORA" and settings["r"] == 4 and settings["lora_alpha"] == 6.0
    assert settings["fan_in_fan_out"] is True  # GPT-2's Conv1D
    assert sorted(settings["target_modules"]) == sorted(model.molora_layers)
    with safe_open(str(tmp_path / "expert_1" / ADAPTER_WEIGHTS), framework="pt") as reader:
        name = "transformer.h.0.attn.c_attn"
        torch.testing.assert_close(reader.get_tensor(f"base_model.model.{name}.lora_B.weight"),
                                   model.molora_layers[name].experts.B[1].T, rtol=0, atol=0)
    gate = json.loads((tmp_path / GATE_CONFIG).read_text())
    assert gate["gate"] == "radar" and gate["experts"] == ["expert_0", "expert_1", "expert_2"]
    assert MoLoRAConfig.from_dict(gate["molora_config"]) == model.molora_config
    with safe_open(str(tmp_path / GATE_WEIGHTS), framework="pt") as reader:
        keys = set(reader.keys())
    assert keys == {key for key in model.adapter_state_dict() if ".gate." in key}


def test_exported_experts_load_back_as_the_same_experts(tmp_path, generator):
    model, clean_base = float64_mixture("llama", generator)
    folders = model.export_experts(tmp_path)
    again = MoLoRAModel.from_peft_adapters(clean_base, folders, model.molora_config)
    for name, layer in model.molora_layers.items():
        torch.testing.assert_close(again.molora_layers[name].experts.A, layer.experts.A, rtol=0, atol=0)
        torch.testing.assert_close(again.molora_layers[name].experts.B, layer.experts.B, rtol=0, atol=0)


def test_forcing_an_expert_out_of_range_is_an_error(generator):
    model, _ = float64_mixture("llama", generator)
    with pytest.raises(ValueError, match=r"expert index=3 is out of range; choose 0 <= index < num_experts=3"):
        model.force_expert(3).__enter__()


def test_cli_exports_a_trained_runs_experts_and_the_run_has_a_model_card(config_file, tmp_path, capsys):
    assert main(["train", "--config", str(config_file), "--set", "train.steps=2"]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    card = (run_dir / "README.md").read_text()
    assert "base_model:" in card and "radar gate" in card and "| experts | 3 |" in card
    assert "sports_understanding" in card and "| steps | 2 |" in card and "macro accuracy" in card
    capsys.readouterr()
    assert main(["export-experts", str(run_dir), str(tmp_path / "out")]) == 0
    assert "3 PEFT LoRA adapters (expert_0, expert_1, expert_2)" in capsys.readouterr().out
    for index in range(3):
        assert (tmp_path / "out" / f"expert_{index}" / ADAPTER_WEIGHTS).is_file()
    assert (tmp_path / "out" / GATE_WEIGHTS).is_file()
    assert main(["export-experts", str(run_dir), str(tmp_path / "out")]) == 2  # never overwritten
    assert "is not empty; choose a new folder" in capsys.readouterr().err


def test_cli_names_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["export-experts", str(tmp_path), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert f"radargate export-experts: error: {tmp_path} is not a run folder written by `radargate train`" in error
    assert not (tmp_path / "out").exists()
