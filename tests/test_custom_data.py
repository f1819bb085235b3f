"""Your own data (``radargate.experiment.data.custom``): every format from every file type, labels on the
assistant tokens only, splits, the mixture, the errors that name file and row, and the CLI end to end."""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from pathlib import Path

import datasets
import pytest
import yaml

from radargate.cli import main
from radargate.experiment.config import DataSettings, ExperimentConfig, SourceSettings
from radargate.experiment.data.batching import IGNORE_INDEX, collate
from radargate.experiment.data.examples import ChatExample, encode_example
from radargate.experiment.data.sources import check_lengths, load_source, load_splits, sampling_weights
from radargate.experiment.data.splits import split_of
from radargate.experiment.train import BatchSchedule

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"

ROWS = {
    "completion": [{"prompt": f"Say the number {i}:", "completion": f" {i}"} for i in range(12)],
    "chat": [
        {"messages": [{"role": "user", "content": f"What is {i} plus one?"},
                      {"role": "assistant", "content": f"{i + 1}."}]}
        for i in range(12)
    ],
    "multiple_choice": [
        {"question": f"Which word is number {i}?", "choices": [f"word {i}", f"word {i + 1}", f"word {i + 2}"],
         "answer": i % 3}
        for i in range(12)
    ],
}


def write_rows(folder: Path, rows: list[dict], kind: str) -> Path:
    """``rows`` as a file of type ``kind`` (lists as JSON text in CSV cells), or a save_to_disk folder."""
    if kind == "csv":
        rows = [{key: json.dumps(value) if isinstance(value, list) else value for key, value in row.items()}
                for row in rows]
    folder.mkdir(parents=True, exist_ok=True)
    table = datasets.Dataset.from_list(rows)
    path = folder / {"jsonl": "rows.jsonl", "csv": "rows.csv", "parquet": "rows.parquet", "saved": "rows"}[kind]
    {"jsonl": lambda: table.to_json(path, lines=True), "csv": lambda: table.to_csv(path, index=False),
     "parquet": lambda: table.to_parquet(path), "saved": lambda: table.save_to_disk(str(path))}[kind]()
    return path


def source(path, fmt: str, **settings) -> SourceSettings:
    return SourceSettings(name="mine", format=fmt, path=str(path), **settings)


def all_examples(splits: dict[str, list]) -> list:
    return [example for examples in splits.values() for example in examples]


def without_origin(splits: dict[str, list]) -> dict[str, list]:
    """The examples with their file and row left out: what the data says, not where it was."""
    return {split: [type(e)(**{**e.__dict__, "origin": ""}) for e in examples] for split, examples in splits.items()}


# -- formats and file types -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet", "saved"])
@pytest.mark.parametrize("fmt", sorted(ROWS))
def test_every_format_loads_the_same_examples_from_every_file_type(tmp_path, fmt, kind):
    reference = load_source(source(write_rows(tmp_path, ROWS[fmt], "jsonl"), fmt), DataSettings())
    loaded = load_source(source(write_rows(tmp_path, ROWS[fmt], kind), fmt), DataSettings())
    assert sum(len(examples) for examples in loaded.values()) == len(ROWS[fmt])
    assert without_origin(loaded) == without_origin(reference)


def test_multiple_choice_rows_become_bigbench_style_examples(tmp_path):
    (example,) = all_examples(load_source(source(write_rows(tmp_path, ROWS["multiple_choice"][:1], "jsonl"),
                                                 "multiple_choice"), DataSettings()))
    assert example.prompt == "Q: Which word is number 0?\n  choice: word 0\n  choice: word 1\n  choice: word 2\nA: "
    assert example.choices == ("word 0", "word 1", "word 2") and example.answer == 0
    assert example.target_scores == (1.0, 0.0, 0.0)


def test_answer_as_index_and_as_text_give_the_same_example(tmp_path):
    row = {"question": "Which is a fruit?", "choices": ["stone", "pear", "chair"]}
    by_index = load_source(source(write_rows(tmp_path / "a", [{**row, "answer": 1}], "jsonl"), "multiple_choice"),
                           DataSettings())
    by_text = load_source(source(write_rows(tmp_path / "b", [{**row, "answer": "pear"}], "jsonl"), "multiple_choice"),
                          DataSettings())
    assert without_origin(by_index) == without_origin(by_text)
    (example,) = all_examples(by_index)
    assert example.choices[example.answer] == "pear"


def test_a_csv_answer_is_matched_against_the_choices_before_it_is_read_as_an_index(tmp_path):
    path = write_text(tmp_path, "rows.csv", 'question,choices,answer\nq,"[""2"", ""1""]",1\nq2,"[""5"", ""6""]",1\n')
    first, second = sorted(all_examples(load_source(source(path, "multiple_choice"), DataSettings())),
                           key=lambda example: example.input)
    assert first.choices[first.answer] == "1" and second.choices[second.answer] == "6"


def test_field_names_are_configurable(tmp_path):
    path = write_rows(tmp_path, [{"q": "Two plus two is", "a": " four"}], "jsonl")
    (example,) = all_examples(load_source(source(path, "completion", prompt_field="q", completion_field="a"),
                                          DataSettings()))
    assert (example.prompt, example.completion) == ("Two plus two is", " four")


# -- labels ---------------------------------------------------------------------------------------


def labelled_runs(labels: list[int]) -> list[list[int]]:
    """The maximal runs of consecutive labelled positions, as token ids."""
    runs, current = [], []
    for label in [*labels, IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    return runs


def test_chat_labels_cover_exactly_the_assistant_turns(tokenizer):
    messages = (("system", "Be brief."), ("user", "Capital of France?"), ("assistant", "Paris."),
                ("user", "And of Italy?"), ("assistant", "Rome, of course."))
    example = ChatExample(task="t", id="x", input="", origin="test row 1", messages=messages)
    batch = collate([encode_example(tokenizer, example, 256)], tokenizer.pad_token_id)
    rendered = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages], tokenize=False)
    assert batch.input_ids[0].tolist() == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    runs = [tokenizer.decode(run) for run in labelled_runs(batch.labels[0].tolist())]
    assert runs == [f"Paris.{tokenizer.eos_token}", f"Rome, of course.{tokenizer.eos_token}"]
    unlabelled = tokenizer.decode([t for t, label in zip(batch.input_ids[0].tolist(), batch.labels[0].tolist(),
                                                         strict=True) if label == IGNORE_INDEX])
    assert "Capital of France?" in unlabelled and "Paris" not in unlabelled and "Rome" not in unlabelled


def test_completion_labels_are_the_completion_and_the_end_of_sequence(tokenizer, tmp_path):
    (example,) = all_examples(load_source(source(write_rows(tmp_path, [{"prompt": "The sky is", "completion":
                                                                         " blue"}], "jsonl"), "completion"),
                                          DataSettings()))
    batch = collate([encode_example(tokenizer, example, 64)], tokenizer.pad_token_id)
    (run,) = labelled_runs(batch.labels[0].tolist())
    assert run == tokenizer(" blue", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert batch.input_ids[0, : -len(run)].tolist() == tokenizer("The sky is")["input_ids"]


# -- splits and mixture ---------------------------------------------------------------------------


def split_ids(splits: dict[str, list]) -> dict[str, set[str]]:
    return {split: {example.id for example in examples} for split, examples in splits.items()}


def test_hash_split_is_deterministic_and_independent_of_row_order(tmp_path):
    rows = [{"prompt": f"Row {i}:", "completion": f" answer {i}"} for i in range(60)]
    forward = load_source(source(write_rows(tmp_path / "forward", rows, "jsonl"), "completion"), DataSettings())
    backward = load_source(source(write_rows(tmp_path / "backward", rows[::-1], "jsonl"), "completion"),
                           DataSettings())
    assert split_ids(forward) == split_ids(backward)
    assert all(split_of(example, seed=0) == split for split, examples in forward.items() for example in examples)
    assert all(forward.values())  # 60 rows fill every split
    reseeded = load_source(source(write_rows(tmp_path, rows, "jsonl"), "completion"), DataSettings(split_seed=1))
    assert split_ids(reseeded) != split_ids(forward)


def test_split_column_and_per_split_files_are_the_files_own_splits(tmp_path):
    rows = [{**row, "split": "test" if i < 3 else "train"} for i, row in enumerate(ROWS["completion"])]
    by_column = load_source(source(write_rows(tmp_path, rows, "jsonl"), "completion", split="column"),
                            DataSettings())
    assert [len(by_column[s]) for s in ("train", "validation", "test")] == [9, 0, 3]
    files = SourceSettings(name="mine", format="completion",
                           train_path=str(write_rows(tmp_path / "train", ROWS["completion"][3:], "jsonl")),
                           test_path=str(write_rows(tmp_path / "test", ROWS["completion"][:3], "jsonl")))
    assert split_ids(load_source(files, DataSettings())) == split_ids(by_column)


def test_a_saved_dataset_dict_keeps_its_splits(tmp_path):
    table = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS["completion"][:8]),
                                  "test": datasets.Dataset.from_list(ROWS["completion"][8:])})
    table.save_to_disk(str(tmp_path / "saved"))
    splits = load_source(source(tmp_path / "saved", "completion"), DataSettings())
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [8, 0, 4]


def test_caps_keep_the_same_examples_whatever_the_row_order(tmp_path):
    rows = [{"prompt": f"Row {i}:", "completion": f" {i}"} for i in range(40)]
    data = DataSettings(max_train_per_task=7, max_test_per_task=2)
    forward = load_source(source(write_rows(tmp_path, rows, "jsonl"), "completion", max_train=5), data)
    backward = load_source(source(write_rows(tmp_path / "b", rows[::-1], "jsonl"), "completion", max_train=5), data)
    assert (len(forward["train"]), len(forward["test"])) == (5, 2)  # the source's cap, else the data-level one
    assert split_ids(forward) == split_ids(backward)


def test_mixture_keeps_each_source_as_a_task_and_draws_by_weight(tmp_path):
    heavy = SourceSettings(name="heavy", format="completion", weight=3.0,
                           path=str(write_rows(tmp_path / "a", ROWS["completion"], "jsonl")))
    light = SourceSettings(name="light", format="chat", path=str(write_rows(tmp_path / "b", ROWS["chat"], "jsonl")))
    config = ExperimentConfig(data=DataSettings(sources=[heavy, light], split_seed=0))
    train = load_splits(config)["train"]
    assert {example.task for example in train} == {"heavy", "light"}
    weights = sampling_weights(config.data, train)
    schedule = BatchSchedule(len(train), batch_size=50, grad_accum=1, seed=0, weights=weights)
    drawn = Counter(train[i].task for step in range(200) for i in schedule.micro_batch(step, 0))
    sizes = Counter(example.task for example in train)
    expected = 3 * sizes["heavy"] / (3 * sizes["heavy"] + sizes["light"])
    assert drawn["heavy"] / sum(drawn.values()) == pytest.approx(expected, abs=0.02)
    assert sampling_weights(DataSettings(sources=[light]), train) is None  # equal weights: plain epochs


# -- errors ---------------------------------------------------------------------------------------


def write_text(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("fmt", "text", "expected"), [
    ("completion", '{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n',
     r"rows.jsonl row 2: field 'completion' is missing; a completion source reads prompt_field='prompt'"),
    ("multiple_choice", '{"question": "q", "choices": ["x", "y"], "answer": 0}\n'
                        '{"question": "q2", "choices": ["x", "y"], "answer": "z"}\n',
     r"rows.jsonl row 2: answer='z' is neither one of the choices \['x', 'y'\] nor an index from 0 to 1"),
    ("multiple_choice", '{"question": "q", "choices": ["x", "y"], "answer": 2}\n',
     r"rows.jsonl row 1: answer=2 is neither one of the choices \['x', 'y'\] nor an index from 0 to 1"),
    ("chat", '{"messages": [{"role": "user", "content": "hi"}]}\n',
     r"rows.jsonl row 1: the conversation has no assistant turn"),
    ("chat", '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}\n',
     r"rows.jsonl row 1: message 2 is .*; each message needs a text 'role' and a text 'content'"),
    ("completion", "", r"data file .*rows.jsonl is empty"),
])
def test_bad_rows_are_errors_naming_file_and_row(tmp_path, fmt, text, expected):
    with pytest.raises(ValueError, match=expected):
        load_source(source(write_text(tmp_path, "rows.jsonl", text), fmt), DataSettings())


def test_a_bad_csv_row_is_numbered_without_the_header(tmp_path):
    path = write_text(tmp_path, "rows.csv", 'question,choices,answer\nq,"[""x"", ""y""]",1\nq2,not a list,0\n')
    with pytest.raises(ValueError, match=r"rows.csv row 2: field 'choices' is text that is not a JSON list"):
        load_source(source(path, "multiple_choice"), DataSettings())


def test_a_bad_split_value_is_an_error_naming_the_row(tmp_path):
    path = write_text(tmp_path, "rows.jsonl", '{"prompt": "a", "completion": "b", "split": "train"}\n'
                                              '{"prompt": "c", "completion": "d", "split": "dev"}\n')
    with pytest.raises(ValueError, match=r"rows.jsonl row 2: split='dev' is not a split; use one of train"):
        load_source(source(path, "completion", split="column"), DataSettings())


def test_missing_and_unknown_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data file .*nothere.jsonl does not exist"):
        load_source(source(tmp_path / "nothere.jsonl", "completion"), DataSettings())
    with pytest.raises(ValueError, match=r"rows.txt has an unknown type '.txt'; use one of .jsonl, .json, .csv"):
        load_source(source(write_text(tmp_path, "rows.txt", "x"), "completion"), DataSettings())


def test_a_row_longer_than_max_length_is_an_error_naming_it(tmp_path, tokenizer):
    rows = [{"prompt": "Short:", "completion": " yes"}, {"prompt": "Long: " + "word " * 40, "completion": " no"}]
    examples = all_examples(load_source(source(write_rows(tmp_path, rows, "jsonl"), "completion"), DataSettings()))
    with pytest.raises(ValueError, match=r"rows.jsonl row 2 is \d+ tokens long .* more than data.max_length=16"):
        check_lengths(tokenizer, examples, 16)


@pytest.mark.parametrize(("settings", "expected"), [
    ({"format": "csv"}, r"data.sources\[mine\].format='csv' is unknown; choose one of completion, chat"),
    ({"format": "chat", "path": ""}, r"names no data; give exactly one of path, train_path"),
    ({"format": "chat", "hub": "someone/data"}, r"names path and hub; give exactly one"),
    ({"format": "chat", "weight": 0.0}, r"data.sources\[mine\].weight=0.0 is not allowed"),
])
def test_source_settings_check_themselves(settings, expected):
    with pytest.raises(ValueError, match=expected):
        SourceSettings(**{"name": "mine", "path": "x.jsonl", **settings})


def test_sources_replace_bigbench_tasks_and_are_read_as_yaml(tmp_path):
    config = ExperimentConfig.load(None, ["data.sources=[{name: no, format: chat, path: x.jsonl, weight: 1e-1}]"])
    assert config.data.tasks == [] and config.data.task_names == ["no"] and config.data.sources[0].weight == 0.1
    with pytest.raises(ValueError, match=r"data.tasks=\['snarks'\] and data.sources are alternatives"):
        ExperimentConfig.load(None, ["data.tasks=[snarks]", "data.sources=[{name: a, format: chat, path: x.jsonl}]"])


# -- end to end -----------------------------------------------------------------------------------


def test_train_and_eval_on_the_example_data_through_the_cli(tmp_path, tiny_model_dir):
    data = yaml.safe_load((EXAMPLES.parents[1] / "configs" / "custom_data.yaml").read_text())["data"]
    for entry in data["sources"]:
        entry["path"] = str(EXAMPLES.parents[1] / entry["path"])
    values = {"name": "mine", "output_dir": str(tmp_path / "runs"), "method": "radar",
              "model": {"name": str(tiny_model_dir)}, "data": data,
              "adapter": {"num_experts": 2, "r": 2, "target_modules": ["q_proj", "v_proj"]},
              "train": {"steps": 2, "batch_size": 4, "precision": "no", "warmup_steps": 0},
              "eval": {"batch_size": 8, "fit_per_task": 2}}
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump(values))
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["train", "--config", str(config)]) == 0
        assert main(["eval", "--run", str(tmp_path / "runs" / "mine"), "--output", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert set(result["per_task"]) == {"word_forms", "assistant", "quiz"}
    assert 0.0 <= result["per_task"]["quiz"]["acc"] <= 1.0 and result["per_task"]["word_forms"]["acc"] is None
    assert all(task["answer_nll"] > 0 for task in result["per_task"].values())
    assert "| assistant | " in out.getvalue() and "| - | - |" in out.getvalue()
    trained = json.loads((tmp_path / "runs" / "mine" / "result.json").read_text())
    assert trained["steps"] == 2 and trained["routing"] and set(trained["test"]["per_task"]) == set(result["per_task"])
    card = (tmp_path / "runs" / "mine" / "README.md").read_text()  # the model card: no accuracy without choices
    assert "| word_forms | " in card and "| - | - | " in card


# -- data sets shipped in a package -----------------------------------------------------------------


def test_the_gsm8k_package_source_gives_every_problem_once_as_a_completion_split_by_hash():
    settings = DataSettings(sources=[SourceSettings(name="gsm8k", format="completion", package="gsm8k")],
                            max_train_per_task=None, max_validation_per_task=None, max_test_per_task=None)
    splits = load_splits(ExperimentConfig(data=settings))
    examples = all_examples(splits)
    assert len(examples) == len({(e.prompt, e.completion) for e in examples}) == 1319
    assert all(e.prompt.startswith("Question: ") and e.prompt.endswith("\nAnswer:") for e in examples)
    assert all(e.completion.startswith(" ") and "\n#### " in e.completion for e in examples)
    assert 0.7 < len(splits["train"]) / 1319 < 0.9 and splits["test"]
    assert all(split_of(e) == split for split, group in splits.items() for e in group)


def test_an_unknown_package_data_set_and_a_package_beside_a_path_are_refused():
    with pytest.raises(ValueError, match=r"data\.sources\[g\]\.package='gsm9k' is unknown; choose one of gsm8k"):
        SourceSettings(name="g", format="completion", package="gsm9k")
    with pytest.raises(ValueError, match=r"names path and package; give exactly one of"):
        SourceSettings(name="g", format="completion", package="gsm8k", path="rows.jsonl")
