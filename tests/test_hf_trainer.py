"""A MoLoRAModel under the Hugging Face Trainer and TRL's SFTTrainer: columns, losses, checkpoints, resuming."""

from __future__ import annotations

import inspect
import string

import datasets
import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Trainer, TrainingArguments

from radargate import MoLoRAModel
from radargate.checkpoint import WEIGHTS_NAME
from radargate.integrations import MoLoRATrainer
from tests.conftest import VOCAB, molora, tiny_llama, token_batch

TARGETS = ["q_proj", "v_proj"]


def token_dataset(rows: int = 16, length: int = 12) -> datasets.Dataset:
    """Random sequences with labels, and a text column the model does not take."""
    ids = token_batch(seed=7, batch=rows, length=length).tolist()
    return datasets.Dataset.from_dict({"input_ids": ids, "labels": ids, "text": [f"row {i}" for i in range(rows)]})


def arguments(output_dir, **overrides) -> TrainingArguments:
    values = {
        "output_dir": str(output_dir), "max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 1e-2,
        "logging_steps": 1, "save_strategy": "no", "report_to": [], "use_cpu": True, "disable_tqdm": True, "seed": 0,
    }
    return TrainingArguments(**{**values, **overrides})


def mixture(seed: int = 0, **overrides) -> MoLoRAModel:
    return molora("llama", seed=seed, target_modules=TARGETS, **{"load_balance_weight": 0.05, **overrides})


def adapter_weights(model: MoLoRAModel) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.adapter_state_dict().items()}


def base_weights(model: MoLoRAModel) -> dict[str, torch.Tensor]:
    adapter = model.adapter_state_dict().keys()
    return {
        name: value.detach().clone()
        for name, value in model.base_model.state_dict().items()
        if name not in adapter
    }


def train_history(trainer: Trainer) -> list[dict]:
    return [row for row in trainer.state.log_history if "loss" in row]


def test_forward_signature_lists_the_base_models_arguments():
    model = mixture()
    parameters = inspect.signature(model.forward).parameters
    assert {"input_ids", "attention_mask", "labels", "with_aux"} <= parameters.keys()
    assert list(parameters)[-1] == "kwargs"  # the base's **kwargs stays last, after with_aux
    ids = token_batch()
    assert torch.equal(model.forward(input_ids=ids).logits, model(input_ids=ids).logits)


def test_plain_trainer_with_default_remove_unused_columns_trains(tmp_path):
    model = mixture()
    adapter_before, base_before = adapter_weights(model), base_weights(model)
    trainer = Trainer(model=model, args=arguments(tmp_path, max_steps=6), train_dataset=token_dataset())
    assert trainer.args.remove_unused_columns
    trainer.train()
    losses = [row["loss"] for row in train_history(trainer)]
    assert len(losses) == 6 and losses[-1] < losses[0]
    adapter_after, base_after = adapter_weights(model), base_weights(model)
    assert all(not torch.equal(adapter_after[name], value) for name, value in adapter_before.items()
               if name.endswith("experts.B"))
    assert all(torch.equal(base_after[name], value) for name, value in base_before.items())


def test_checkpoint_holds_only_the_adapter_and_its_config(tmp_path):
    model = mixture()
    trainer = MoLoRATrainer(model=model, args=arguments(tmp_path, save_strategy="steps", save_steps=2),
                            train_dataset=token_dataset())
    trainer.train()
    checkpoint = tmp_path / "checkpoint-2"
    weight_files = sorted(path.name for path in checkpoint.glob("*.safetensors"))
    assert weight_files == [WEIGHTS_NAME]
    assert (checkpoint / "molora_config.json").is_file()
    base_bytes = sum(p.numel() * p.element_size() for p in model.base_model.parameters())
    assert (checkpoint / WEIGHTS_NAME).stat().st_size < base_bytes / 4
    with safe_open(str(checkpoint / WEIGHTS_NAME), framework="pt") as reader:
        keys = set(reader.keys())
    assert keys == set(model.adapter_state_dict())
    assert not keys & set(base_weights(model))


@pytest.mark.parametrize("optim", ["adamw_torch", "sgd"])
def test_resume_gives_the_uninterrupted_runs_weights(tmp_path, optim):
    settings = {"max_steps": 6, "save_strategy": "steps", "save_steps": 3, "gradient_accumulation_steps": 2,
                "optim": optim}
    uninterrupted = mixture(seed=1)
    data = token_dataset()
    first = MoLoRATrainer(model=uninterrupted, args=arguments(tmp_path / "a", **settings), train_dataset=data)
    first.train()

    resumed = mixture(seed=1)
    trainer = MoLoRATrainer(model=resumed, args=arguments(tmp_path / "b", **settings), train_dataset=token_dataset())
    trainer.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    assert trainer.state.global_step == 6
    expected, got = adapter_weights(uninterrupted), adapter_weights(resumed)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)
    initial = adapter_weights(mixture(seed=1))
    assert any(not torch.equal(got[name], value) for name, value in initial.items())  # it did train


def test_aux_losses_are_logged_beside_the_lm_loss(tmp_path):
    trainer = MoLoRATrainer(model=mixture(z_loss_weight=0.01), args=arguments(tmp_path), train_dataset=token_dataset())
    trainer.train()
    for row in train_history(trainer):
        assert {"lm_loss", "aux_loss", "aux/load_balance", "aux/z_loss"} <= row.keys()
        assert row["lm_loss"] + row["aux_loss"] == pytest.approx(row["loss"])
        assert row["aux_loss"] == pytest.approx(0.05 * row["aux/load_balance"] + 0.01 * row["aux/z_loss"], rel=1e-5)


def test_aux_loss_counts_once_per_step_under_gradient_accumulation(tmp_path):
    """The same 8 sequences as one batch or as two accumulated halves: the same LM loss, and the auxiliary loss
    (weighted 1.0 here, so that counting it twice would show) once, not once per micro-batch."""
    losses = {}
    for accumulation in (1, 2):
        trainer = MoLoRATrainer(
            model=mixture(load_balance_weight=1.0),
            args=arguments(tmp_path / str(accumulation), max_steps=1, per_device_train_batch_size=8 // accumulation,
                           gradient_accumulation_steps=accumulation),
            train_dataset=token_dataset(),
        )
        trainer.train()
        losses[accumulation] = train_history(trainer)[0]
    assert losses[2]["lm_loss"] == pytest.approx(losses[1]["lm_loss"], abs=1e-5)
    assert losses[2]["aux_loss"] == pytest.approx(losses[1]["aux_loss"], abs=0.05)
    assert losses[2]["loss"] == pytest.approx(losses[1]["loss"], abs=0.05)


def test_saved_model_loads_with_identical_outputs(tmp_path):
    model = mixture(seed=2)
    trainer = MoLoRATrainer(model=model, args=arguments(tmp_path), train_dataset=token_dataset())
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    torch.manual_seed(2)
    restored = MoLoRAModel.from_pretrained(tiny_llama(), tmp_path / "final")
    model.eval()
    ids = token_batch(seed=3)
    with torch.no_grad():
        assert torch.equal(restored(input_ids=ids).logits, model(input_ids=ids).logits)


def test_trainer_refuses_a_model_without_experts(tmp_path):
    with pytest.raises(TypeError, match=r"trains a MoLoRAModel, got LlamaForCausalLM; wrap the model"):
        MoLoRATrainer(model=tiny_llama(), args=arguments(tmp_path), train_dataset=token_dataset())


def tiny_chat_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character, and a minimal chat template (role initial, content, end of turn)."""
    vocabulary = ["<pad>", "<eos>", "<unk>", *string.ascii_lowercase, *string.digits, *" .,?!:"]
    assert len(vocabulary) <= VOCAB
    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(vocabulary)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>")
    tokenizer.chat_template = (
        "{% for message in messages %}{{ message['role'][0] }}:{{ message['content'] }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}a:{% endif %}"
    )
    return tokenizer


def test_sft_trainer_trains_on_a_chat_dataset(tmp_path):
    trl = pytest.importorskip("trl")
    from radargate.integrations import MoLoRASFTTrainer

    rows = [{"messages": [{"role": "user", "content": f"what is {i} plus {i}?"},
                          {"role": "assistant", "content": f"it is {2 * i}."}]} for i in range(16)]
    model = mixture()
    before = adapter_weights(model)
    config = trl.SFTConfig(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=1e-2, logging_steps=1,
        save_strategy="steps", save_steps=6, report_to=[], use_cpu=True, bf16=False, disable_tqdm=True,
        activation_checkpointing=True,  # TRL's default, under its current name (the old one warns)
    )
    trainer = MoLoRASFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                               processing_class=tiny_chat_tokenizer())
    trainer.train()
    history = train_history(trainer)
    assert history[-1]["loss"] < history[0]["loss"]
    assert {"aux_loss", "aux/load_balance", "lm_loss", "mean_token_accuracy"} <= history[-1].keys()
    after = adapter_weights(model)
    assert any(not torch.equal(after[name], value) for name, value in before.items())
    assert sorted(path.name for path in (tmp_path / "checkpoint-6").glob("*.safetensors")) == [WEIGHTS_NAME]


def test_a_process_that_does_not_save_still_joins_the_adapters_gathering(tmp_path, monkeypatch):
    """The Trainer calls ``_save`` on every process; under FSDP2 ``save_pretrained`` gathers the shards, so a
    process that writes nothing must still call it, or the saving process waits forever."""
    model = mixture()
    trainer = MoLoRATrainer(model=model, args=arguments(tmp_path), train_dataset=token_dataset())
    calls = []
    monkeypatch.setattr(model, "save_pretrained", lambda directory, *, is_main_process: calls.append(is_main_process))
    monkeypatch.setattr(TrainingArguments, "should_save", property(lambda self: False))
    trainer.save_model(str(tmp_path / "elsewhere"))
    assert calls == [False] and not (tmp_path / "elsewhere").exists()
