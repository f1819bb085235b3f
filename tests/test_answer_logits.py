"""Training's answer-only logits (``answer_logprobs``) give the loss and gradients of full logits.

The reference is independent: the model's logits at every position, shifted, and the mean cross
entropy over the answer labels, in float64, on real encoded pairs of different prompt and answer
lengths (right-padded by ``collate``), for each kind of model the trainer sees.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from radargate import MoLoRAConfig, MoLoRAModel, get_molora_model
from radargate.experiment.data.batching import IGNORE_INDEX, answer_logprobs, answer_positions, collate, encode_pair

from .conftest import randomize_adapters

PAIRS = [
    ("Question: is the sky blue on a clear day?\nAnswer:", " yes"),
    ("Q: Which is heavier, a kilogram of feathers or a kilogram of iron, if both are weighed in air?\nA:",
     " they weigh the same"),
    ("Today is 03/01/2024. What was the date yesterday?\nA:", " 02/29/2024"),
    ("Say it:", " Plausible, since the player is a footballer"),
]


@pytest.fixture(scope="module")
def batch(tokenizer):
    encoded = [encode_pair(tokenizer, context, answer, max_length=64) for context, answer in PAIRS]
    assert len({pair.answer_mask.index(True) for pair in encoded}) == len(PAIRS)
    assert len({sum(pair.answer_mask) for pair in encoded}) > 1
    return collate(encoded, tokenizer.pad_token_id)


def tiny_llama(vocab_size: int) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    ))


def tiny_gpt2(vocab_size: int) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=128))


def build(kind: str, vocab_size: int) -> torch.nn.Module:
    """A float64 model of ``kind`` in training mode with dropout off and random (non-zero) adapters."""
    torch.manual_seed(0)
    base = (tiny_gpt2 if kind == "gpt2" else tiny_llama)(vocab_size).double()
    if kind == "molora":
        config = MoLoRAConfig(num_experts=3, r=4, gate="radar", target_modules=["q_proj", "v_proj"],
                              load_balance_weight=0.1, z_loss_weight=0.01)
        model = get_molora_model(base, config)
        randomize_adapters(model, torch.Generator().manual_seed(1))
    elif kind == "peft":
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                init_lora_weights=False))
    else:
        model = base
    model.to(torch.float64).train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def full_logits_loss(model, batch, **kwargs) -> tuple[torch.Tensor, object]:
    """Mean NLL of the answer tokens from the logits at every position (the reference)."""
    output = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs)
    assert output.logits.shape[:2] == batch.input_ids.shape
    logits, targets = output.logits[:, :-1], batch.labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    return loss, output


def answer_only_loss(model, batch, **kwargs) -> tuple[torch.Tensor, object]:
    logprobs, output = answer_logprobs(model, batch, **kwargs)
    return -logprobs.mean(), output


def loss_and_gradients(model, batch, loss_fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    kwargs = {"with_aux": True} if isinstance(model, MoLoRAModel) else {}
    model.zero_grad(set_to_none=True)
    lm_loss, output = loss_fn(model, batch, **kwargs)
    loss = lm_loss + output["aux_loss"] if kwargs else lm_loss
    loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), gradients


KINDS = ["llama", "gpt2", "molora", "peft"]


@pytest.mark.parametrize("kind", KINDS)
def test_answer_only_loss_equals_full_logits_loss(kind, batch, tokenizer):
    model = build(kind, len(tokenizer))
    kwargs = {"with_aux": True} if kind == "molora" else {}
    expected, full_output = full_logits_loss(model, batch, **kwargs)
    loss, output = answer_only_loss(model, batch, **kwargs)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    if kind == "molora":
        assert output["aux_loss"].detach() > 0
        torch.testing.assert_close(output["aux_loss"], full_output["aux_loss"], rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_answer_only_gradients_equal_full_logits_gradients(kind, batch, tokenizer):
    model = build(kind, len(tokenizer))
    expected_loss, expected = loss_and_gradients(model, batch, full_logits_loss)
    loss, gradients = loss_and_gradients(model, batch, answer_only_loss)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=0)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert gradients.keys() == expected.keys() == trainable
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, expected[name], rtol=1e-9, atol=1e-12, msg=name)


def test_answer_only_loss_matches_in_float32(batch, tokenizer):
    model = build("molora", len(tokenizer)).float()
    expected, _ = full_logits_loss(model, batch, with_aux=True)
    loss, _ = answer_only_loss(model, batch, with_aux=True)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)


def test_answer_positions_are_the_union_of_the_rows_answer_positions(batch):
    expected = set()
    for row in batch.labels:
        answer = (row != IGNORE_INDEX).nonzero().squeeze(-1)
        expected.update((answer - 1).tolist())
    assert answer_positions(batch).tolist() == sorted(expected)


@pytest.mark.parametrize("kind", KINDS)
def test_lm_head_runs_at_answer_positions_only(kind, batch, tokenizer):
    model = build(kind, len(tokenizer))
    shapes = []
    lm_head = model.get_output_embeddings()
    handle = lm_head.register_forward_hook(lambda module, inputs, output: shapes.append(tuple(inputs[0].shape)))
    try:
        answer_logprobs(model, batch)
    finally:
        handle.remove()
    rows, length = batch.input_ids.shape
    assert shapes == [(rows, len(answer_positions(batch)), 32)]
    assert len(answer_positions(batch)) < length - 1
