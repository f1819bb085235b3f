"""reasoning-gym generators as a data source: the rows, their determinism across processes, the errors, the version
recorded in runs and study cells, and teacher-forced exact match checked against greedy generation."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from radargate.cli import main
from radargate.experiment.cells import Cell, CellStore
from radargate.experiment.config import DataSettings, ExperimentConfig, SourceSettings
from radargate.experiment.data import reasoning_gym as rg
from radargate.experiment.data.packaged import data_versions
from radargate.experiment.data.sources import load_source
from radargate.experiment.evaluate import evaluate_examples
from radargate.experiment.loading import load_model_and_tokenizer
from radargate.files import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
ROWS_SCRIPT = """
import json, sys
from radargate.experiment.config import ExperimentConfig
from radargate.experiment.data.sources import load_splits
config = ExperimentConfig.from_dict(json.loads(sys.argv[1]))
splits = load_splits(config)
rows = [[split, e.task, e.id, e.prompt, e.completion] for split, examples in splits.items() for e in examples]
open(sys.argv[2], "w", encoding="utf-8").write(json.dumps(rows, ensure_ascii=False))
"""
# generators whose questions come from word lists, names and sets as well as numbers; isomorphic_strings and
# list_functions iterate over sets of strings (generated in this process, their rows change with the hash salt)
GENERATORS = ["basic_arithmetic", "word_sorting", "family_relationships", "syllogism", "letter_jumble",
              "knights_knaves", "course_schedule", "number_sorting", "isomorphic_strings", "list_functions"]


def source(task: str, **settings) -> SourceSettings:
    return SourceSettings(name=task, package="reasoning_gym", task=task, **settings)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def test_two_processes_build_byte_identical_rows(tmp_path):
    config = {"data": {"sources": [{"name": task, "package": "reasoning_gym", "task": task, "size": "60"}
                                   for task in GENERATORS]}}
    outputs = []
    for hash_seed in ("1", "2"):  # Python's string hashing (set order) differs between the two
        path = tmp_path / f"rows-{hash_seed}.json"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO / "src")}
        subprocess.run([sys.executable, "-c", ROWS_SCRIPT, json.dumps(config), str(path)], env=env, check=True,
                       cwd=tmp_path, timeout=600)
        outputs.append(path.read_bytes())
    assert len(json.loads(outputs[0])) > 300
    assert outputs[0] == outputs[1]


def test_rows_are_the_question_with_the_answer_cue_and_the_spaced_answer():
    drawn = rg.entries("basic_arithmetic", size=5, seed=rg.default_seed("basic_arithmetic"))
    rows = rg.completion_rows(source("basic_arithmetic", size=5))
    assert rows == [{"prompt": entry["question"].rstrip() + "\nAnswer:", "completion": " " + entry["answer"]}
                    for entry in drawn]


def test_default_seed_is_the_first_four_bytes_of_the_task_names_sha256():
    expected = int(hashlib.sha256(b"word_sorting").hexdigest()[:8], 16)
    assert rg.default_seed("word_sorting") == expected
    assert rg.completion_rows(source("word_sorting", size=8)) == rg.completion_rows(
        source("word_sorting", size=8, seed=expected))
    assert rg.completion_rows(source("word_sorting", size=8)) != rg.completion_rows(
        source("word_sorting", size=8, seed=expected + 1))


def test_duplicated_questions_are_dropped_before_the_split():
    settings = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+"]}
    questions = [entry["question"] for entry in rg.entries("basic_arithmetic", size=300, seed=3, config=settings)]
    assert len(set(questions)) < len(questions)  # one-digit sums repeat
    uncapped = DataSettings(max_train_per_task=None, max_validation_per_task=None, max_test_per_task=None)
    splits = load_source(source("basic_arithmetic", size=300, seed=3, config=settings), uncapped)
    prompts = [example.prompt for examples in splits.values() for example in examples]
    assert sorted(prompts) == sorted(question + "\nAnswer:" for question in dict.fromkeys(questions))


def test_generator_settings_from_yaml_text_are_typed():
    settings = source("basic_arithmetic", config={"min_terms": "2", "max_terms": "3", "operators": ["+", "-"]})
    assert settings.config == {"min_terms": 2, "max_terms": 3, "operators": ["+", "-"]}


def write_config(folder: Path, tiny_model_dir: Path, sources: list[dict], **data) -> Path:
    values = {
        "name": "rg", "output_dir": str(folder / "runs"), "method": "radar", "model": {"name": str(tiny_model_dir)},
        "data": {"sources": sources, "max_length": 256, **data},
        "adapter": {"num_experts": 2, "r": 2, "target_modules": ["q_proj", "v_proj"]},
        "train": {"steps": 3, "batch_size": 4, "lr": 0.01, "warmup_steps": 1, "save_every": 3, "precision": "no"},
        "eval": {"batch_size": 8, "fit_per_task": 4},
    }
    path = folder / "rg.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_an_unknown_generator_is_a_one_line_error_that_lists_the_generators(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir, [{"name": "a", "package": "reasoning_gym", "task": "basic_arith"}])
    status, _, err = run_cli("train", "--config", str(config))
    assert status == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "'basic_arith' is unknown" in err and "closest: basic_arithmetic" in err
    assert all(name in err for name in ("word_sorting", "zebra_puzzles", "gcd"))


def test_an_unknown_generator_setting_is_a_one_line_error_that_lists_its_settings(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir, [{"name": "a", "package": "reasoning_gym", "task": "gcd",
                                                      "config": {"min_number": 3}}])
    status, _, err = run_cli("train", "--config", str(config))
    assert status == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "no setting(s) min_number" in err
    assert all(name in err for name in rg.settings_of("gcd")) and "min_value" in err


def test_generator_settings_are_refused_on_other_sources():
    with pytest.raises(ValueError, match="sets task, size, which only package: reasoning_gym reads"):
        SourceSettings(name="g", package="gsm8k", task="gcd", size=3)


def test_train_on_reasoning_gym_sources_through_the_cli_records_the_version_and_exact_match(tmp_path, tiny_model_dir):
    sources = [{"name": "sums", "package": "reasoning_gym", "task": "basic_arithmetic", "size": 40},
               {"name": "words", "package": "reasoning_gym", "task": "word_sorting", "size": 40, "seed": 5,
                "config": {"min_words": 3, "max_words": 4}}]
    config = write_config(tmp_path, tiny_model_dir, sources, max_test_per_task=5)
    status, out, err = run_cli("train", "--config", str(config))
    assert status == 0, err
    result = json.loads((tmp_path / "runs" / "rg" / "result.json").read_text())
    assert result["data_versions"] == {"reasoning-gym": "0.1.25"}
    assert set(result["test"]["per_task"]) == {"sums", "words"}
    assert all(record["exact_match"] in (0.0, 1.0) for record in result["test"]["examples"])
    assert "exact match (%)" in out


def cell_file(store: CellStore, name: str, versions: dict[str, str] | None) -> None:
    record = {"cell": {"name": name}, "config": ExperimentConfig().to_dict(), "failed": None}
    if versions:
        record["data_versions"] = versions
    atomic_write_json(store.directory / f"{name}.json", record)


def test_a_cell_made_with_another_reasoning_gym_version_than_its_siblings_is_refused(tmp_path):
    store = CellStore(tmp_path)
    study = ExperimentConfig()
    cell_file(store, "softmax-n2-r8-s0-lr0.001", {"reasoning-gym": "0.1.25"})
    cell_file(store, "base", {"reasoning-gym": "0.1.24"})
    with pytest.raises(ValueError, match=r"reasoning-gym 0\.1\.24, but the cell .*softmax-n2-r8-s0-lr0\.001\.json "
                                         r"with reasoning-gym 0\.1\.25"):
        store.load(Cell("base"), study)


def test_a_new_cell_is_refused_when_the_installed_version_differs_from_the_cells(tmp_path):
    store = CellStore(tmp_path)
    cell_file(store, "base", {"reasoning-gym": "0.1.24"})
    installed = data_versions([source("gcd")])
    assert installed == {"reasoning-gym": "0.1.25"}
    with pytest.raises(ValueError, match=r"the installed packages was made with reasoning-gym 0\.1\.25"):
        store.check_versions(installed, "the installed packages")
    store.check_versions({"reasoning-gym": "0.1.24"}, "the installed packages")  # the same version passes


# ----------------------------------------------------------------------------------- exact match, real model


def greedy_begins_with_answer(model, tokenizer, example) -> bool:
    prompt = tokenizer(example.prompt, add_special_tokens=True, return_tensors="pt")
    answer = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
    generated = model.generate(**prompt, max_new_tokens=len(answer), do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)
    return generated[0, prompt["input_ids"].shape[1]:].tolist() == answer


def test_teacher_forced_exact_match_agrees_with_greedy_generation():
    model, tokenizer = load_model_and_tokenizer()
    model.eval()
    data = DataSettings(max_train_per_task=None, max_validation_per_task=None, max_test_per_task=None)
    examples = [example for task in ("syllogism", "letter_counting", "gcd", "basic_arithmetic")
                for split in load_source(source(task, size=15), data).values() for example in split]
    result = evaluate_examples(model, tokenizer, examples, batch_size=8, max_length=1024)
    taught = {record["id"]: record["exact_match"] for record in result["examples"]}
    with torch.no_grad():
        greedy = {example.id: float(greedy_begins_with_answer(model, tokenizer, example)) for example in examples}
    assert taught == greedy
    assert 0 < sum(greedy.values()) < len(greedy)  # some right, some wrong


def test_tasks_lists_every_generator_with_its_median_lengths_through_the_cli():
    status, out, err = run_cli("tasks", "--reasoning-gym")
    assert status == 0, err
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines()
             if line.startswith("| ") and not line.startswith("| generator")]
    rows = {row[0]: row for row in cells}
    assert sorted(rows) == rg.generators() and len(rows) > 100
    _, prompt, answer, _ = rows["basic_arithmetic"]
    assert 5 < float(prompt) < 60 and 1 <= float(answer) < 10
    assert rows["propositional_logic"][1:3] == ["-", "-"]
    assert "without a text question and answer" in rows["propositional_logic"][3]


def test_a_study_trains_on_generators_and_scores_unseen_generators_zero_shot(tmp_path, tiny_model_dir):
    sources = [{"name": task, "package": "reasoning_gym", "task": task, "size": 30}
               for task in ("basic_arithmetic", "word_sorting")]
    config = write_config(tmp_path, tiny_model_dir, sources, max_test_per_task=4)
    values = yaml.safe_load(config.read_text())
    values["train"]["steps"] = 2
    values["study"] = {"methods": ["softmax"], "experts": [2], "seeds": [0], "lr_grid": [],
                       "max_unseen_per_task": 5, "report_dir": str(tmp_path / "reports"),
                       "unseen_sources": [{"name": "gcd", "package": "reasoning_gym", "task": "gcd", "size": 50},
                                          {"name": "dice", "package": "reasoning_gym", "task": "dice", "size": 50}]}
    config.write_text(yaml.safe_dump(values))
    status, _, err = run_cli("study", "--config", str(config))
    assert status == 0, err
    record = json.loads((tmp_path / "reports" / "rg_cells" / "softmax-n2-r2-s0-lr0.01.json").read_text())
    assert record["data_versions"] == {"reasoning-gym": "0.1.25"}
    unseen = record["examples"]["unseen"]
    assert sorted(set(unseen["task"])) == ["dice", "gcd"] and len(unseen["task"]) == 10
    assert set(unseen["exact_match"]) <= {0.0, 1.0} and len(unseen["answer_nll"]) == 10
    assert record["unseen_settings"]["unseen_sources"][0]["task"] == "gcd"
    assert record["metrics"]["unseen"]["macro_exact_match"] is not None


def test_a_study_refuses_unseen_rows_longer_than_max_length_before_training(tmp_path, tiny_model_dir):
    sources = [{"name": "sums", "package": "reasoning_gym", "task": "basic_arithmetic", "size": 30}]
    config = write_config(tmp_path, tiny_model_dir, sources, max_length=96)
    values = yaml.safe_load(config.read_text())
    values["study"] = {"methods": ["softmax"], "experts": [2], "seeds": [0], "lr_grid": [],
                       "report_dir": str(tmp_path / "reports"),
                       "unseen_sources": [{"name": "rotate", "package": "reasoning_gym", "task": "rotate_matrix",
                                           "size": 20}]}
    config.write_text(yaml.safe_dump(values))
    status, _, err = run_cli("study", "--config", str(config))
    last = err.strip().splitlines()[-1]  # above it: the tokenizer's model loading progress
    assert status == 2 and "Traceback" not in err and last.startswith("radargate study: error: ")
    assert "package data set 'reasoning_gym' (source 'rotate') row" in last and "data.max_length=96" in last
    assert not (tmp_path / "reports" / "rg_cells").exists() and not (tmp_path / "runs").exists()
