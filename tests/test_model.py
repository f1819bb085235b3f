"""Attaching experts to whole models: surgery, training, generation, checkpoints, PEFT adapters."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

import radargate.checkpoint as checkpoint
from radargate import GATES, MoLoRAConfig, MoLoRAModel, get_molora_model
from radargate.stats import LastCall
from tests.conftest import TARGETS, TINY_MODELS, molora, randomize_adapters, tiny_llama, token_batch


def test_no_matching_target_lists_the_linear_layers():
    with pytest.raises(ValueError, match=r"matched no module of LlamaForCausalLM.*q_proj") as error:
        get_molora_model(tiny_llama(), MoLoRAConfig(target_modules=["query"]))
    assert "target_modules=['query']" in str(error.value)


def test_target_that_is_not_linear_is_rejected():
    with pytest.raises(ValueError, match=r"'model.norm', a LlamaRMSNorm"):
        get_molora_model(tiny_llama(), MoLoRAConfig(target_modules=["norm"]))


def test_regex_targets_and_plain_modules():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    wrapped = get_molora_model(model, MoLoRAConfig(target_modules=r"[02]", num_experts=2, r=2))
    assert sorted(wrapped.molora_layers) == ["0", "2"]
    assert wrapped(torch.randn(5, 4)).shape == (5, 3)


def test_attaching_twice_is_an_error():
    model = molora("llama")
    with pytest.raises(ValueError, match="already carries experts"):
        get_molora_model(model, MoLoRAConfig(target_modules=TARGETS["llama"]))


def test_only_adapters_train_and_counts_are_printed(capsys):
    model = molora("gpt2")
    trainable, total = model.parameter_counts()
    adapter = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name or ".gate." in name)
    assert trainable == adapter and 0 < trainable < total
    model.print_trainable_parameters()
    assert f"trainable params: {trainable:,} || all params: {total:,}" in capsys.readouterr().out


def train_steps(model: nn.Module, ids: torch.Tensor, steps: int = 8, lr: float = 1e-2) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("gate", list(GATES))
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_trains_and_generates_with_the_cache(kind, gate):
    model = molora(kind, gate=gate, top_k=2, load_balance_weight=0.01)
    ids = token_batch(length=16)
    losses = train_steps(model, ids)
    assert losses[-1] < losses[0] - 0.1, losses
    model.eval()
    prompt = ids[:, :5]
    with torch.no_grad():
        cached = model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape == (2, 11)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("kind", ["qwen2", "gemma3"])
def test_other_families_attach_run_and_generate(kind, generator):
    model = molora(kind, gate="radar")
    randomize_adapters(model, generator, scale=0.2)
    ids = token_batch()
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_experts():
            plain = model(input_ids=ids).logits
        generated = model.generate(input_ids=ids[:, :4], max_new_tokens=3, do_sample=False)
    assert (adapted - plain).abs().max() > 1e-3
    assert generated.shape == (2, 7)


def test_gradient_checkpointing_gives_the_same_gradients(generator):
    model = molora("llama", gate="radar", orthogonality_weight=0.1)
    randomize_adapters(model, generator, scale=0.1)
    ids = token_batch()

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}

    model.train()
    plain = gradients()
    model.gradient_checkpointing_enable()
    assert model.base_model.model.gradient_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("gate", list(GATES))
def test_save_and_load_give_bit_identical_outputs(tmp_path, gate, generator):
    model = molora("llama", gate=gate, seed=3)
    randomize_adapters(model, generator, scale=0.2)
    model.save_pretrained(tmp_path / "ckpt")
    torch.manual_seed(3)
    restored = MoLoRAModel.from_pretrained(tiny_llama(), tmp_path / "ckpt")
    assert restored.molora_config == model.molora_config
    ids = token_batch()
    model.eval()
    with torch.no_grad():
        assert torch.equal(restored(input_ids=ids).logits, model(input_ids=ids).logits)
    assert not any(p.requires_grad for p in restored.parameters())


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    molora("gpt2").save_pretrained(tmp_path)
    weights = tmp_path / checkpoint.WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"molora_model.safetensors is truncated or corrupt"):
        MoLoRAModel.from_pretrained(TINY_MODELS["gpt2"](), tmp_path)


def test_missing_checkpoint_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint file .*molora_model.safetensors does not exist"):
        MoLoRAModel.from_pretrained(tiny_llama(), tmp_path / "nowhere")


def test_checkpoint_for_another_shape_is_refused(tmp_path):
    molora("llama").save_pretrained(tmp_path)
    wider = copy.deepcopy(tiny_llama().config)
    wider.hidden_size, wider.intermediate_size = 48, 80
    other = type(tiny_llama())(wider)
    with pytest.raises(ValueError, match=r"does not fit this base model .*has shape \[3, 4, 32\] in the checkpoint"):
        MoLoRAModel.from_pretrained(other, tmp_path)


def test_crash_while_saving_leaves_the_old_checkpoint(tmp_path, monkeypatch, generator):
    old = molora("llama", seed=1)
    randomize_adapters(old, generator)
    old.save_pretrained(tmp_path)
    before = (tmp_path / checkpoint.WEIGHTS_NAME).read_bytes()

    def crash_halfway(tensors, path, metadata=None):
        with open(path, "wb") as stream:
            stream.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", crash_halfway)
    new = molora("llama", seed=2)
    with pytest.raises(KeyboardInterrupt):
        new.save_pretrained(tmp_path)
    assert (tmp_path / checkpoint.WEIGHTS_NAME).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def save_peft_adapter(base: nn.Module, path, r: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    peft_model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=r, lora_alpha=2 * r + 1, target_modules=["q_proj", "v_proj"],
                                        init_lora_weights=False),
    )
    peft_model.save_pretrained(path)
    return peft_model


def test_peft_adapters_become_frozen_experts_with_identical_outputs(tmp_path):
    torch.manual_seed(0)
    base = tiny_llama().eval()
    peft_models = [save_peft_adapter(base, tmp_path / f"a{i}", r, seed=i) for i, r in enumerate((4, 2))]
    model = MoLoRAModel.from_peft_adapters(copy.deepcopy(base), [tmp_path / "a0", tmp_path / "a1"])
    assert model.molora_config.num_experts == 2 and model.molora_config.r == 4
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".gate." in name for name in trainable)
    x = torch.randn(5, 32)
    for name, layer in model.molora_layers.items():
        outputs = layer.experts.outputs(layer.experts.codes(x))
        for slot, peft_model in enumerate(peft_models):
            lora = peft_model.base_model.model.get_submodule(name)
            expected = lora.lora_B["default"](lora.lora_A["default"](x)) * lora.scaling["default"]
            torch.testing.assert_close(outputs[:, slot], expected, rtol=1e-5, atol=1e-6)


def test_single_peft_adapter_as_expert_reproduces_the_peft_model(tmp_path):
    torch.manual_seed(0)
    base = tiny_llama().eval()
    peft_model = save_peft_adapter(base, tmp_path / "a", r=4, seed=5).eval()
    model = MoLoRAModel.from_peft_adapters(copy.deepcopy(base), [tmp_path / "a"]).eval()
    ids = token_batch()
    with torch.no_grad():
        assert (model(input_ids=ids).logits - peft_model(input_ids=ids).logits).abs().max() < 1e-5


def test_peft_adapter_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json is missing"):
        MoLoRAModel.from_peft_adapters(tiny_llama(), [tmp_path])
    save_peft_adapter(tiny_llama(), tmp_path / "a", r=4, seed=0)
    with pytest.raises(ValueError, match=r"got 1 adapters for num_experts=2"):
        MoLoRAModel.from_peft_adapters(tiny_llama(), [tmp_path / "a"], MoLoRAConfig(num_experts=2))


def test_routing_statistics_are_recorded(generator):
    model = molora("llama", gate="radar")
    randomize_adapters(model, generator, scale=0.2)
    with torch.no_grad(), model.record_routing() as stats:
        model(input_ids=token_batch())
    summary = stats["model.layers.0.self_attn.q_proj"].summary()
    assert summary["tokens"] == 24
    assert sum(summary["mean_weight"]) == pytest.approx(1.0)
    assert len(summary["theta"]) == len(summary["cos_after"]) == 24 * 3
    assert max(abs(t) for t in summary["theta"]) > 0
    assert model.molora_layers["model.layers.0.self_attn.q_proj"].routing_stats is None


def test_last_call_routing_is_the_last_calls_gate_output(generator):
    model = molora("llama", gate="radar")
    randomize_adapters(model, generator, scale=0.2)
    name = "model.layers.0.self_attn.v_proj"
    layer = model.molora_layers[name]
    with torch.no_grad(), model.record_routing(LastCall) as stats:
        model(input_ids=token_batch(seed=1))
        model(input_ids=token_batch(seed=2, batch=1, length=5))
        tokens = model.base_model.model.layers[0].input_layernorm(
            model.base_model.model.embed_tokens(token_batch(seed=2, batch=1, length=5)))
    last = stats[name]
    assert last.weights.shape == last.theta.shape == (5, 3)
    codes = layer.experts.codes(tokens.reshape(5, -1))
    expected = layer.gate(tokens.reshape(5, -1), codes, layer.experts, with_stats=True)
    torch.testing.assert_close(last.weights, expected.weights)
    torch.testing.assert_close(last.theta, expected.extras["theta"])


def test_half_precision_base_trains_float32_adapters(generator):
    torch.manual_seed(0)
    model = get_molora_model(tiny_llama().to(torch.bfloat16), MoLoRAConfig(gate="radar", target_modules=["q_proj"]))
    layer = model.molora_layers["model.layers.0.self_attn.q_proj"]
    assert layer.experts.A.dtype == torch.float32 and layer.base_layer.weight.dtype == torch.bfloat16
    ids = token_batch()
    output = model(input_ids=ids, labels=ids)
    assert output.logits.dtype == torch.bfloat16
    output.loss.backward()
    assert torch.isfinite(layer.experts.B.grad).all() and layer.experts.B.grad.norm() > 0
