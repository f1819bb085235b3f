"""lm-evaluation-harness on radargate's exported tasks agrees exactly with radargate's own scorer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from radargate.cli import main
from radargate.experiment.config import ExperimentConfig
from radargate.experiment.data.sources import load_splits
from radargate.experiment.evaluate import evaluate_examples
from radargate.experiment.harness import evaluate_with_harness, export_tasks, task_name
from radargate.experiment.methods import model_to_evaluate


@pytest.mark.parametrize("trained", [False, True], ids=["base", "trained_mixture"])
def test_lm_eval_agrees_exactly_with_radargate_on_the_exported_split(config_file, tmp_path, trained):
    if trained:
        assert main(["train", "--config", str(config_file), "--set", "train.steps=3"]) == 0
    model, tokenizer, config = model_to_evaluate(tmp_path / "runs" / "tiny" if trained else None, config_file)
    examples = load_splits(config)["test"]
    names = export_tasks(examples, tmp_path / "lm_eval_tasks", "test")
    ours = evaluate_examples(model, tokenizer, examples, batch_size=4, max_length=config.data.max_length)
    theirs = evaluate_with_harness(model, tokenizer, names, include_path=tmp_path / "lm_eval_tasks", batch_size=4)
    assert sorted(theirs) == sorted(task_name(task) for task in ours["per_task"])
    for task, metrics in ours["per_task"].items():
        assert theirs[task_name(task)]["acc"] == pytest.approx(metrics["acc"], abs=1e-12)
        assert theirs[task_name(task)]["acc_norm"] == pytest.approx(metrics["acc_norm"], abs=1e-12)
        assert theirs[task_name(task)]["acc_bytes"] == pytest.approx(metrics["acc_norm"], abs=1e-12)


def test_export_tasks_cli_writes_one_task_per_folder_and_refuses_to_overwrite(config_file, tmp_path, capsys):
    out = tmp_path / "tasks"
    assert main(["export-tasks", "--config", str(config_file), "--out", str(out)]) == 0
    config = ExperimentConfig.load(config_file)
    test = load_splits(config)["test"]
    for task in {example.task for example in test}:
        folder = out / task_name(task)
        spec = yaml.safe_load((folder / f"{task_name(task)}.yaml").read_text())
        rows = [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()]
        assert spec["task"] == task_name(task) and spec["output_type"] == "multiple_choice"
        assert [row["id"] for row in rows] == [example.id for example in test if example.task == task]
        for row, example in zip(rows, (e for e in test if e.task == task), strict=True):
            assert row["context"] + row["choices"][row["answer"]] == example.prompt + example.choices[example.answer]
    assert main(["export-tasks", "--config", str(config_file), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_eval_harness_cli_scores_a_trained_run_offline(config_file, tmp_path, capsys):
    assert main(["train", "--config", str(config_file), "--set", "train.steps=2"]) == 0
    out = tmp_path / "tasks"
    assert main(["export-tasks", "--config", str(config_file), "--out", str(out),
                 "--tasks", "sports_understanding"]) == 0
    capsys.readouterr()
    results = tmp_path / "harness.json"
    assert main(["eval", "--run", str(tmp_path / "runs" / "tiny"), "--harness", "radargate_sports_understanding",
                 "--harness-include", str(out), "--output", str(results)]) == 0
    assert "| radargate_sports_understanding |" in capsys.readouterr().out
    assert 0.0 <= json.loads(results.read_text())["radargate_sports_understanding"]["acc"] <= 1.0
    assert main(["eval", "--run", str(tmp_path / "runs" / "tiny"), "--harness", "radargate_nonexistent",
                 "--harness-include", str(out)]) == 2
    assert "unknown lm-eval tasks ['radargate_nonexistent']" in capsys.readouterr().err
    run = str(tmp_path / "runs" / "tiny")
    assert main(["eval", "--run", run, "--harness", "radargate_sports_understanding", "--split", "validation",
                 "--gsm8k", "2"]) == 2  # radargate's own data flags would be dropped: refused, not ignored
    assert "--split and --gsm8k cannot be used with --harness" in capsys.readouterr().err
    assert main(["eval", "--run", run, "--limit", "3"]) == 2
    assert "--limit and --harness-include can only be used with --harness" in capsys.readouterr().err


def test_a_users_multiple_choice_source_exports_and_scores_the_same_in_lm_eval(tmp_path, tiny_model_dir):
    root = Path(__file__).parents[1]
    values = yaml.safe_load((root / "configs" / "custom_data.yaml").read_text())
    for source in values["data"]["sources"]:
        source["path"] = str(root / source["path"])
    values["model"]["name"] = str(tiny_model_dir)
    config_path = tmp_path / "custom.yaml"
    config_path.write_text(yaml.safe_dump(values))
    out = tmp_path / "tasks"
    assert main(["export-tasks", "--config", str(config_path), "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["radargate_quiz"]  # completion and chat have no choices
    chosen = tmp_path / "chosen"  # --tasks names sources of such a config, as eval's does
    assert main(["export-tasks", "--config", str(config_path), "--out", str(chosen), "--tasks", "quiz"]) == 0
    assert (chosen / "radargate_quiz" / "test.jsonl").read_text() == (out / "radargate_quiz" / "test.jsonl").read_text()
    assert main(["export-tasks", "--config", str(config_path), "--out", str(tmp_path / "x"), "--tasks", "quix"]) == 2
    model, tokenizer, config = model_to_evaluate(None, config_path)
    quiz = [example for example in load_splits(config)["test"] if example.task == "quiz"]
    ours = evaluate_examples(model, tokenizer, quiz, batch_size=4, max_length=config.data.max_length)
    theirs = evaluate_with_harness(model, tokenizer, ["radargate_quiz"], include_path=out, batch_size=4)
    assert theirs["radargate_quiz"]["acc"] == pytest.approx(ours["per_task"]["quiz"]["acc"], abs=1e-12)
    assert theirs["radargate_quiz"]["acc_bytes"] == pytest.approx(ours["per_task"]["quiz"]["acc_norm"], abs=1e-12)
