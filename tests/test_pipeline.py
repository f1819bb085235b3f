"""The training pipeline on a tiny model with a few real BIG-bench examples: scoring, exact resume,
the CLI, and its errors. The tokenizer is SmolLM2's (from the offline cache), the model a tiny
random Llama saved to disk and loaded through transformers' ordinary path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import radargate.experiment.train as train_module
from radargate.cli import main
from radargate.experiment.config import ExperimentConfig
from radargate.experiment.data.examples import CompletionExample, MCExample
from radargate.experiment.data.gsm8k import GSM8KExample, is_correct
from radargate.experiment.data.sources import load_splits
from radargate.experiment.evaluate import (
    _aggregate,
    _choice_records,
    answer_of_completion,
    evaluate_examples,
    score_choices,
)
from radargate.experiment.methods import load_trained
from radargate.experiment.run import train
from radargate.experiment.train import BatchSchedule, skipped_steps_verdict
from radargate.gates import GATES
from tests.conftest import PIPELINE_TASKS

TASKS = PIPELINE_TASKS


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_scores_equal_hand_computed_log_likelihoods(tokenizer, architecture):
    torch.manual_seed(0)
    if architecture == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4))
    model.eval()
    items = [("Q: is the sky blue?\nA:", [" yes", " no, never at all", " maybe"]),
             ("Question: two plus two equals what number?\nAnswer:", [" four", " 22 or so"]),
             ("Hi", [" there friend"]), ("", ["The sky is blue.", "Grass is blue."]), ("", ["Unconditional"])]
    scores = score_choices(model, tokenizer, items, batch_size=4, max_length=64)
    with torch.no_grad():
        for (context, continuations), item_scores in zip(items, scores, strict=True):
            for continuation, score in zip(continuations, item_scores, strict=True):
                prompt = tokenizer(context)["input_ids"] or [tokenizer.bos_token_id]  # lm-eval's prefix token
                answer = tokenizer(continuation, add_special_tokens=False)["input_ids"]
                logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]
                logprobs = torch.log_softmax(logits.double(), dim=-1)
                expected = sum(float(logprobs[len(prompt) - 1 + j, token]) for j, token in enumerate(answer))
                assert score == pytest.approx(expected, abs=1e-4)


def test_accuracy_is_argmax_plain_and_per_byte():
    examples = [
        MCExample(task="t", id="a", input="", prompt="Q: ", choices=("x", "yyyy"), target_scores=(1.0, 0.0), answer=0),
        MCExample(task="t", id="b", input="", prompt="Q: ", choices=("x", "yyyy"), target_scores=(0.0, 1.0), answer=1),
        MCExample(task="u", id="c", input="", prompt="Q: ", choices=("x", "yy"), target_scores=(0.0, 1.0), answer=1),
    ]
    # continuations are " x" (2 bytes) and " yyyy" (5): example b per byte is -1.0 vs -1.2, still wrong
    scores = [[-1.0, -5.0], [-2.0, -6.0], [-3.0, -1.0]]
    answer_tokens = [1, 2, 1]  # the correct answer's token count: its NLL per token is -score / count
    result = _aggregate(_choice_records(examples, scores, answer_tokens))
    assert result["per_task"]["t"] == {"acc": 0.5, "acc_norm": 0.5, "answer_nll": (1.0 + 3.0) / 2, "exact_match": None,
                                       "n": 2}  # exact match: completions only
    assert result["per_task"]["u"] == {"acc": 1.0, "acc_norm": 1.0, "answer_nll": 1.0, "exact_match": None, "n": 1}
    assert result["macro_acc"] == 0.75 and result["macro_answer_nll"] == 1.5 and result["n"] == 3
    assert [(r["id"], r["acc"], r["answer_nll"]) for r in result["examples"]] == [
        ("a", 1.0, 1.0), ("b", 0.0, 3.0), ("c", 1.0, 1.0)]
    scores[1] = [-2.0, -4.0]  # per byte: " x" -1.0 vs " yyyy" -0.8 -> normalised picks the long answer
    assert _aggregate(_choice_records(examples, scores, answer_tokens))["per_task"]["t"]["acc_norm"] == 1.0


def test_answer_nll_is_the_correct_answers_mean_token_nll(tokenizer):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)).eval()
    example = MCExample(task="t", id="a", input="", prompt="Q: is two even?\nA:", choices=("no", "yes, it is"),
                        target_scores=(0.0, 1.0), answer=1)
    (record,) = evaluate_examples(model, tokenizer, [example], batch_size=4, max_length=64)["examples"]
    context, continuations = example.scoring_pairs()
    prompt = tokenizer(context)["input_ids"]
    answer = tokenizer(continuations[1], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([prompt + answer])).logits[0].double(), dim=-1)
    expected = -sum(float(logprobs[len(prompt) - 1 + j, token]) for j, token in enumerate(answer)) / len(answer)
    assert record["answer_nll"] == pytest.approx(expected, abs=1e-4)


def test_completions_are_scored_the_same_in_any_batch_and_come_back_in_their_order(tokenizer):
    """Evaluation batches sequences of similar length together; each record must still be its own example's."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)).eval()
    examples = [CompletionExample(task=f"t{i % 2}", id=str(i), input=str(i), origin="test",
                                  prompt="Question: " + "word " * (7 * i % 23) + "?\nAnswer:",
                                  completion=" " + "x" * (i % 4 + 1))
                for i in range(11)]
    together = evaluate_examples(model, tokenizer, examples, batch_size=4, max_length=128)["examples"]
    alone = [evaluate_examples(model, tokenizer, [example], batch_size=1, max_length=128)["examples"][0]
             for example in examples]
    assert [record["id"] for record in together] == [example.id for example in examples]
    for batched, single in zip(together, alone, strict=True):
        assert batched["answer_nll"] == pytest.approx(single["answer_nll"], abs=1e-4)
        assert batched["exact_match"] == single["exact_match"]


def test_batch_schedule_depends_on_the_step_only():
    schedule = BatchSchedule(num_examples=10, batch_size=4, grad_accum=2, seed=7)
    assert schedule.micro_batch(3, 1) == BatchSchedule(10, 4, 2, 7).micro_batch(3, 1)
    first_epoch = [i for step in range(5) for micro in range(2) for i in schedule.micro_batch(step, micro)][:10]
    assert sorted(first_epoch) == list(range(10))
    assert schedule.micro_batch(0, 0) != BatchSchedule(10, 4, 2, 8).micro_batch(0, 0)


def test_a_run_may_skip_its_share_of_steps_but_not_one_more():
    assert skipped_steps_verdict([2, 5], steps=20, max_share=0.1) is None
    verdict = skipped_steps_verdict([2, 5, 9], steps=20, max_share=0.1)
    assert verdict == ("the run skipped steps 2, 5, 9 as non-finite: 3 of its 20 steps (15%), more than allowed "
                       "(train.max_skipped_share=0.1: at most 2 of 20)")
    assert skipped_steps_verdict(list(range(1, 30)), steps=100, max_share=0.29) is None  # 0.29 * 100 < 29 in floats
    assert skipped_steps_verdict([1], steps=100, max_share=0.0) is not None


def test_a_run_may_not_end_on_a_skipped_step_within_its_share():
    assert skipped_steps_verdict([19], steps=20, max_share=0.1) is None
    verdict = skipped_steps_verdict([19, 20], steps=20, max_share=0.1)
    assert verdict.startswith("its last step was skipped as non-finite, so it would end while diverging")
    assert "steps 19, 20" in verdict and "at most 2 of 20" in verdict
    assert skipped_steps_verdict([20], steps=20, max_share=1.0) is not None


def test_resumed_run_equals_uninterrupted_run(config_file, tmp_path, monkeypatch):
    config = ExperimentConfig.load(config_file)
    _, _, whole = train(config, run_dir=tmp_path / "whole", show_progress=False)

    original_step = train_module._Trainer._step

    def killed_at_step_five(self, step):
        if step == 4:
            raise KeyboardInterrupt("killed")
        return original_step(self, step)

    monkeypatch.setattr(train_module._Trainer, "_step", killed_at_step_five)
    with pytest.raises(KeyboardInterrupt):
        train(config, run_dir=tmp_path / "split", show_progress=False)
    monkeypatch.setattr(train_module._Trainer, "_step", original_step)
    _, _, resumed = train(config, run_dir=tmp_path / "split", resume=True, show_progress=False)
    assert [row["loss"] for row in resumed.history] == [row["loss"] for row in whole.history]
    assert len(resumed.history) == 6
    logged = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [1, 2, 3, 4, 5, 6]
    whole_weights = (tmp_path / "whole" / "adapter" / "molora_model.safetensors").read_bytes()
    assert (tmp_path / "split" / "adapter" / "molora_model.safetensors").read_bytes() == whole_weights


def test_cli_compare_trains_evaluates_and_reports(config_file, tmp_path, capsys):
    methods = "compare.methods=[base,lora,softmax,radar]"
    assert main(["compare", "--config", str(config_file), "--set", "train.steps=3", "--set", methods]) == 0
    printed = capsys.readouterr().out
    run_dir = tmp_path / "runs" / "tiny"
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results["methods"]) == ["base", "lora", "softmax", "radar"]
    for method, result in results["methods"].items():
        assert set(result["test"]["per_task"]) == set(TASKS), method
        assert result["test"]["n"] == 10 and len(result["history"]) == (0 if method == "base" else 3)
        assert method in printed
    assert results["methods"]["base"]["trainable_params"] == 0
    assert results["methods"]["radar"]["routing"]  # routing statistics for mixtures
    assert results["methods"]["lora"]["routing"] is None
    assert (run_dir / "report.md").is_file() and (run_dir / "plots" / "loss_curves.png").is_file()
    for result in results["methods"].values():  # per-example records, and the fit on training examples
        assert len(result["test"]["examples"]) == 10 and set(result["fit"]["per_task"]) == set(TASKS)
        assert result["fit"]["per_task"][TASKS[0]]["n"] == 16  # eval.fit_per_task=20, but 16 are trained on
    report = (run_dir / "report.md").read_text()
    assert "## Differences with 95% confidence intervals" in report
    for row in ("| radar - softmax | test | answer_nll |", "| radar - base | fit | answer_nll |",
                "| lora - softmax | test | acc |"):
        assert row in report
    # a second compare finds every method done and only rebuilds the report
    before = (run_dir / "radar" / "result.json").read_bytes()
    assert main(["compare", "--config", str(config_file), "--set", "train.steps=3", "--set", methods]) == 0
    assert (run_dir / "radar" / "result.json").read_bytes() == before
    capsys.readouterr()
    output = tmp_path / "eval.json"
    args = ["--tasks", "winowhy", "--split", "validation", "--gsm8k", "2", "--output", str(output)]
    assert main(["eval", "--run", str(run_dir / "radar"), *args]) == 0
    assert "winowhy" in capsys.readouterr().out
    evaluation = json.loads(output.read_text())
    assert evaluation["gsm8k"]["n"] == 2 and set(evaluation["per_task"]) == {"winowhy"}
    assert main(["eval", "--run", str(run_dir / "radar"), *args]) == 2  # the output exists: not overwritten


def test_unknown_task_lists_available_tasks(config_file, capsys):
    assert main(["train", "--config", str(config_file), "--set", "data.tasks=[sports_understandin]"]) == 2
    error = capsys.readouterr().err
    assert "sports_understandin" in error and "sports_understanding" in error
    assert "`radargate tasks` lists them" in error


def test_misspelt_config_key_is_named(config_file, capsys):
    assert main(["train", "--config", str(config_file), "--set", "train.step=3"]) == 2
    assert "train.step" in capsys.readouterr().err


def test_existing_run_is_not_overwritten(config_file, tmp_path, capsys):
    args = ["train", "--config", str(config_file), "--set", "train.steps=2", "--set", "compare.methods=[radar]"]
    assert main(args) == 0
    config_before = (tmp_path / "runs" / "tiny" / "config.yaml").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert main([*args[:-2], "--set", "train.lr=0.5", "--resume"]) == 2
    error = capsys.readouterr().err
    assert "cannot resume" in error and "train.lr: 0.01 -> 0.5" in error
    assert (tmp_path / "runs" / "tiny" / "config.yaml").read_bytes() == config_before


def test_corrupt_or_missing_checkpoint_gives_clear_errors(config_file, tmp_path, capsys):
    assert main(["eval", "--run", str(tmp_path / "nowhere")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    config = ExperimentConfig.load(config_file, ["train.steps=2"])
    train(config, show_progress=False)
    state_file = config.run_dir / "checkpoint" / "trainer_state.pt"
    saved = torch.load(state_file, weights_only=True)
    names = saved["optimizer"]["param_groups"][0]["params"]  # optimizer state keyed by position, as torch's own
    saved["optimizer"]["state"] = {names.index(name): value for name, value in saved["optimizer"]["state"].items()}
    saved["optimizer"]["param_groups"][0]["params"] = list(range(len(names)))
    torch.save(saved, state_file)
    with pytest.raises(ValueError, match=r"checkpoint .*: its optimizer state does not fit this model \(KeyError"):
        train(config, resume=True, show_progress=False)
    state_file.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"checkpoint .* is missing files or corrupt"):
        train(config, resume=True, show_progress=False)


def test_gsm8k_answer_is_cut_where_the_model_starts_a_new_question():
    example = GSM8KExample(question="q", solution="... #### 18", answer="18")
    rambling = "She sells 16 - 3 - 4 = 9 eggs, 9 * 2 = 18 dollars.\nQuestion: Another one with 7 apples?"
    assert answer_of_completion(rambling).endswith("18 dollars.")
    assert is_correct(answer_of_completion(rambling), example)
    assert not is_correct(rambling, example)  # uncut, the last number would be 7


@pytest.mark.parametrize("method", ["base", "lora", *GATES])
def test_train_trains_the_method_it_names(config_file, tmp_path, method):
    """The saved config, the trained layers and the result file agree on what was trained."""
    assert main(["train", "--config", str(config_file), "--set", f"method={method}", "--set", "train.steps=2"]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    result = json.loads((run_dir / "result.json").read_text())
    model, _, config = load_trained(run_dir)
    assert saved["method"] == result["method"] == config.method == method
    if method in GATES:
        assert saved["adapter"]["gate"] == method
        assert {type(layer.gate) for layer in model.molora_layers.values()} == {GATES[method]}
        assert result["adapter"] == {"kind": "mixture", "gates": [method], "num_experts": [3], "r": [2], "layers": 4}
    elif method == "lora":  # PEFT's LoRA at the mixture's width: rank num_experts * r
        assert "gate" not in saved["adapter"]
        assert model.peft_config["default"].r == 3 * 2
        assert result["adapter"] == {"kind": "peft_lora", "r": [6]}
    else:
        assert result["adapter"] == {"kind": "none"} and result["trainable_params"] == 0


def test_eval_set_changes_evaluation_not_the_trained_run(config_file, tmp_path, capsys):
    assert main(["train", "--config", str(config_file), "--set", "train.steps=2"]) == 0
    run_dir = str(tmp_path / "runs" / "tiny")
    capsys.readouterr()
    assert main(["eval", "--run", run_dir, "--set", "data.max_test_per_task=2", "--set", "eval.batch_size=3"]) == 0
    assert "| macro | 4 |" in capsys.readouterr().out
    assert main(["eval", "--run", run_dir, "--set", "adapter.r=4"]) == 2
    assert "cannot change adapter" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["lora", "radar"])
def test_the_saved_adapter_holds_the_trained_weights(config_file, tmp_path, method):
    """The final adapter (PEFT's format or radargate's) is the last checkpoint's weights, every tensor equal."""
    overrides = [f"method={method}", "train.steps=2", "train.lr=0.1", "eval.fit_per_task=0"]
    assert main(["train", "--config", str(config_file), *(f"--set={value}" for value in overrides)]) == 0
    run_dir = tmp_path / "runs" / "tiny"

    def weights(path: Path) -> dict[str, torch.Tensor]:  # PEFT drops the adapter's name, radargate its wrapper's
        return {name.replace(".default", "").removeprefix("base_model."): tensor
                for name, tensor in load_file(str(path)).items()}

    trained = weights(run_dir / "checkpoint" / "trainable.safetensors")
    saved = weights(next((run_dir / "adapter").glob("*.safetensors")))
    assert saved.keys() == trained.keys()
    assert all(torch.equal(saved[name], tensor) for name, tensor in trained.items())
    up_projections = [tensor for name, tensor in trained.items() if name.endswith((".B", "lora_B.weight"))]
    assert up_projections and all(tensor.abs().max() > 0 for tensor in up_projections)  # trained, not B = 0


def test_eval_scores_a_run_in_the_precision_it_trained_in(config_file, tmp_path, capsys):
    """``radargate eval`` autocasts as training and its own evaluation did (``train.precision``)."""
    args = ["--set", "train.steps=2", "--set", "train.precision=bf16"]
    # a process of its own: accelerate fixes the precision of the first run in a process
    trained = subprocess.run([sys.executable, "-m", "radargate.cli", "train", "--config", str(config_file), *args],
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr
    run_dir = tmp_path / "runs" / "tiny"
    trained = json.loads((run_dir / "result.json").read_text())["test"]
    assert main(["eval", "--run", str(run_dir), "--output", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert [e["answer_nll"] for e in evaluated["examples"]] == [e["answer_nll"] for e in trained["examples"]]
    in_float32 = evaluate_examples(*load_trained(run_dir)[:2], load_splits(ExperimentConfig.load(config_file))["test"])
    assert [e["answer_nll"] for e in in_float32["examples"]] != [e["answer_nll"] for e in trained["examples"]]


def test_a_run_that_cannot_start_leaves_no_folder_so_the_corrected_command_just_runs(config_file, tmp_path, capsys):
    args = ["train", "--config", str(config_file), "--set", "train.steps=1"]
    assert main([*args, "--set", "adapter.target_modules=[foo_proj]"]) == 2
    assert "foo_proj" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tiny").exists()
    assert main(args) == 0


@pytest.mark.parametrize("count", ["-3", "0", "two"])
def test_eval_refuses_a_gsm8k_count_that_is_not_a_positive_number(count, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--run", "anywhere", "--gsm8k", count])
    assert exit_info.value.code == 2 and f"argument --gsm8k: {count!r} is not allowed" in capsys.readouterr().err
