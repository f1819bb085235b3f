"""BIG-bench loader: splits, prompts and errors on the stand-in sdist (``tests/bigbench_fixture``), and the facts
of the real tasks (counts, pinned splits, real prompts) on the real sdist where it can be had (``real_cache``)."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import radargate.experiment.data as data
from radargate.cli import main
from radargate.experiment.data import bigbench as bb
from radargate.experiment.data import splits as hash_split
from radargate.experiment.data.examples import SPLITS, MCExample
from tests import bigbench_fixture as fixture


@pytest.fixture(scope="module")
def suite() -> dict[str, list[MCExample]]:
    """The default suite from the stand-in sdist (the tests' cache)."""
    return bb.load_tasks(bb.DEFAULT_SUITE)


@pytest.fixture(scope="module")
def real_suite(real_cache: Path) -> dict[str, list[MCExample]]:
    return bb.load_tasks(bb.DEFAULT_SUITE, real_cache)


def fake(task: str, text: str, n_choices: int = 2) -> MCExample:
    choices = tuple(f"c{i}" for i in range(n_choices))
    scores = tuple(float(i == 0) for i in range(n_choices))
    return MCExample(task, f"{task}|{text}", text, text, choices, scores, 0)


texts = st.lists(st.text(max_size=12), min_size=1, max_size=60, unique=True)


# ------------------------------------------------------------------------------------ the loader


def test_default_suite_is_indexed_multiple_choice_and_loads(suite: dict[str, list[MCExample]]) -> None:
    available = set(bb.list_tasks())
    assert set(bb.DEFAULT_SUITE) <= available
    assert list(suite) == list(bb.DEFAULT_SUITE)
    for name, examples in suite.items():
        assert len(examples) > 0, name
        assert all(e.task == name and len(e.choices) >= 2 for e in examples)
        assert all(len(e.choices) == len(e.target_scores) for e in examples)
        assert all(e.target_scores[e.answer] == max(e.target_scores) for e in examples)
        assert len({e.id for e in examples}) == len(examples), f"{name}: duplicate ids"
    assert suite["logical_deduction/three_objects"][0].family == "logical_deduction"


def test_exact_duplicates_are_dropped(suite: dict[str, list[MCExample]]) -> None:
    # The stand-in repeats each plain task's first example once; comparisons may repeat by chance too.
    raw = json.loads((bb.fetch_bigbench().parent / "tasks" / "social_iqa" / "task.json").read_text())["examples"]
    distinct = {json.dumps(e, sort_keys=True) for e in raw}
    assert len(raw) == fixture.EXAMPLES_PER_TASK + 1
    assert len(suite["social_iqa"]) == len(distinct) < len(raw)


def test_list_tasks_has_subtask_names_and_no_parents() -> None:
    names = bb.list_tasks()
    assert "logical_deduction/three_objects" in names
    assert "logical_deduction" not in names
    assert "ascii_word_recognition" not in names  # generative only
    assert "ascii_word_recognition" in bb.list_tasks(multiple_choice_only=False)
    assert names == sorted(names)


def test_index_is_cached_next_to_the_tarball() -> None:
    tarball = bb.fetch_bigbench()
    index = tarball.parent / "index.json"
    bb.list_tasks()
    before = index.stat().st_mtime_ns
    bb.list_tasks()
    assert index.stat().st_mtime_ns == before
    assert json.loads(index.read_text())["tarball_size"] == tarball.stat().st_size


def test_prompt_with_task_prefix_and_output_prefix(suite: dict[str, list[MCExample]]) -> None:
    example = next(e for e in suite[fixture.PREFIXED_TASK] if e.input.startswith("Is "))
    assert example.prompt == f"Decide whether the statement is true or false:\nStatement: {example.input}\nTrue/false? "
    a, b = map(int, example.input.removeprefix("Is ").removesuffix("?").split(" larger than "))
    assert example.choices[example.answer] == ("yes" if a > b else "no")


def test_prompt_with_appended_choices_uses_default_prefixes(suite: dict[str, list[MCExample]]) -> None:
    example = next(e for e in suite["social_iqa"] if len(e.choices) == 4)
    choice_lines = "".join(f"\n  choice: {c}" for c in example.choices)
    assert example.prompt == f"Q: {example.input}{choice_lines}\nA: "
    a, b = map(int, example.input.removeprefix("What is ").removesuffix("?").split(" plus "))
    assert example.choices[example.answer] == str(a + b)


def test_choices_not_appended_when_the_task_says_so(suite: dict[str, list[MCExample]]) -> None:
    example = next(e for e in suite[fixture.UNAPPENDED_TASK] if len(e.choices) == 4)
    assert example.prompt == "Q: " + example.input + "\nA: "
    assert not any(choice in example.prompt for choice in example.choices)


def test_scoring_pairs_move_trailing_space_to_the_choices(suite: dict[str, list[MCExample]]) -> None:
    example = suite["strategyqa"][0]
    context, continuations = example.scoring_pairs()
    assert context.endswith("\nA:")
    assert continuations == tuple(" " + c for c in example.choices)
    assert [context + c for c in continuations] == [example.prompt + c for c in example.choices]


def test_task_outside_the_suite_is_extracted_on_demand() -> None:
    examples = bb.load_task("anachronisms")
    assert len(examples) > 100
    assert all(e.task == "anachronisms" for e in examples)
    assert (bb.fetch_bigbench().parent / "tasks" / "anachronisms" / "task.json").is_file()


# ------------------------------------------------------------------------------ the real tasks


def test_the_real_default_suite_loads(real_cache: Path, real_suite: dict[str, list[MCExample]]) -> None:
    assert set(bb.DEFAULT_SUITE) <= set(bb.list_tasks(real_cache))
    assert len(bb.list_tasks(real_cache)) > 300
    assert all(len({e.id for e in examples}) == len(examples) for examples in real_suite.values())


def test_example_counts_after_deduplication(real_suite: dict[str, list[MCExample]]) -> None:
    # Raw counts 1954/2290/2865/1000; the rest are exact duplicates, dropped as BIG-bench does.
    counts = {name: len(examples) for name, examples in real_suite.items()}
    assert counts == {
        "social_iqa": 1935,
        "strategyqa": 2289,
        "winowhy": 2862,
        "logical_deduction/three_objects": 300,
        "logical_deduction/five_objects": 500,
        "logical_deduction/seven_objects": 700,
        "date_understanding": 369,
        "sports_understanding": 986,
        "elementary_math_qa/question_only": 7688,
        "intent_recognition": 693,
    }


def test_real_prompt_with_task_prefix_and_output_prefix(real_suite: dict[str, list[MCExample]]) -> None:
    example = next(e for e in real_suite["sports_understanding"] if e.input == "Jamal Murray was perfect from the line")
    assert example.prompt == (
        "Determine whether the following statement or statements are plausible or implausible:"
        "\nStatement: Jamal Murray was perfect from the line\nPlausible/implausible? "
    )
    assert sorted(example.choices) == ["implausible", "plausible"]
    assert example.choices[example.answer] == "plausible"


def test_real_prompt_with_appended_choices(real_suite: dict[str, list[MCExample]]) -> None:
    example = next(e for e in real_suite["social_iqa"] if e.input.startswith("Tracy didn't go home that evening"))
    choice_lines = "".join(f"\n  choice: {c}" for c in example.choices)
    assert example.prompt == f"Q: {example.input}{choice_lines}\nA: "
    assert example.choices[example.answer] == "Find somewhere to go"


def test_shuffled_choices_remove_the_first_position_bias(real_cache: Path,
                                                         real_suite: dict[str, list[MCExample]]) -> None:
    # date_understanding lists the right answer first in 364 of 369 examples.
    original = bb.load_task("date_understanding", real_cache, shuffle_choices=False)
    assert sum(e.answer == 0 for e in original) > 350
    shuffled = real_suite["date_understanding"]
    assert max(Counter(e.answer for e in shuffled).values()) < 150
    assert [e.choices[e.answer] for e in shuffled] == [e.choices[e.answer] for e in original]


def test_split_sizes_are_pinned_across_machines(real_suite: dict[str, list[MCExample]]) -> None:
    # Golden numbers: a change here means every saved result was made on different splits.
    splits = hash_split.split_examples(real_suite["date_understanding"])
    assert {s: len(v) for s, v in splits.items()} == {"train": 297, "validation": 32, "test": 40}
    splits = hash_split.split_examples(real_suite["date_understanding"], seed=1)
    assert {s: len(v) for s, v in splits.items()} != {"train": 297, "validation": 32, "test": 40}


def test_a_study_config_gives_small_suite_tasks_100_test_examples(real_suite) -> None:
    examples = (example for task in real_suite.values() for example in task)
    splits = hash_split.split_examples(examples, max_per_split={"test": 100}, min_test_per_task=100)
    per_task = {task: sum(e.task == task for e in splits["test"]) for task in real_suite}
    assert per_task == dict.fromkeys(real_suite, 100)  # every default task has at least 300 examples


# ------------------------------------------------------------------------------------------- errors


def test_unknown_task_names_the_bad_name_and_suggests() -> None:
    with pytest.raises(ValueError, match=r"unknown BIG-bench task 'social_iq'") as info:
        bb.load_task("social_iq")
    message = str(info.value)
    assert "social_iqa" in message
    assert f"{len(bb.list_tasks())} multiple-choice tasks available" in message


def test_parent_name_lists_its_subtasks() -> None:
    with pytest.raises(ValueError, match="logical_deduction/three_objects"):
        bb.load_task("logical_deduction")


def test_generative_task_is_rejected() -> None:
    with pytest.raises(ValueError, match="'ascii_word_recognition' is not multiple-choice"):
        bb.load_task("ascii_word_recognition")


def test_unreachable_index_raises_clearly_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RADARGATE_INDEX_URL", "http://127.0.0.1:9/simple")  # discard port: refused at once
    with pytest.raises(RuntimeError, match=r"could not read the package index page http://127\.0\.0\.1:9/simple/bigbench/"
                       rf".*or put the file into {re.escape(str(tmp_path / 'bigbench'))} by hand"):
        bb.fetch_bigbench(tmp_path)
    assert list((tmp_path / "bigbench").iterdir()) == []


def test_the_cli_reports_data_it_cannot_fetch_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RADARGATE_CACHE", str(tmp_path))  # an empty cache: BIG-bench must be fetched
    monkeypatch.setenv("RADARGATE_INDEX_URL", "http://127.0.0.1:9/simple")
    assert main(["tasks"]) == 1  # the work failed, not the input
    error = capsys.readouterr().err
    assert error.startswith("radargate tasks: error: could not read the package index page")
    assert f"put the file into {tmp_path / 'bigbench'} by hand" in error and len(error.splitlines()) == 1


def test_download_with_wrong_hash_is_discarded(tmp_path: Path, monkeypatch) -> None:
    """A served file whose sha256 differs from the pinned one never reaches the cache."""
    served = tmp_path / "served.tar.gz"
    served.write_bytes(b"not the real sdist")
    monkeypatch.setattr(data, "_file_url", lambda project, filename: served.as_uri())
    with pytest.raises(RuntimeError, match="does not match the pinned"):
        bb.fetch_bigbench(tmp_path / "cache")
    assert list((tmp_path / "cache" / "bigbench").iterdir()) == []


def test_cache_dir_comes_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RADARGATE_CACHE", str(tmp_path))
    assert data.cache_root() == tmp_path
    assert data.cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("RADARGATE_CACHE")
    assert data.cache_root() == Path.home() / ".cache" / "radargate"


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.8, 0.3, -0.1), (0.5, 0.3, 0.1)])
def test_bad_fractions_are_rejected(fractions: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="fractions must be"):
        hash_split.split_examples([fake("t", "a")], fractions=fractions)


def test_cap_for_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown splits"):
        hash_split.split_examples([fake("t", "a")], max_per_split={"dev": 3})


# ------------------------------------------------------------------------------------------- splits


def test_suite_splits_are_deterministic_disjoint_and_complete(suite: dict[str, list[MCExample]]) -> None:
    examples = [e for task in suite.values() for e in task]
    first = bb.load_suite()
    assert first == bb.load_suite()
    ids = {split: {e.id for e in first[split]} for split in SPLITS}
    assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    assert set().union(*ids.values()) == {e.id for e in examples}
    shuffled = examples[:]
    random.Random(7).shuffle(shuffled)
    assert hash_split.split_examples(shuffled) == first


def test_shared_inputs_share_a_split(suite: dict[str, list[MCExample]]) -> None:
    examples = suite["logical_deduction/three_objects"]
    by_input: dict[str, set[str]] = {}
    for example in examples:
        by_input.setdefault(example.input, set()).add(hash_split.split_of(example))
    assert len(by_input) < len(examples)  # several questions per paragraph
    assert all(len(splits) == 1 for splits in by_input.values())


def test_caps_per_task_and_split_keep_a_stable_subset(suite: dict[str, list[MCExample]]) -> None:
    capped = bb.load_suite(max_per_split={"train": 50, "test": 20})
    train = Counter(e.task for e in capped["train"])
    assert set(train.values()) == {50}
    assert all(n <= 20 for n in Counter(e.task for e in capped["test"]).values())
    full = bb.load_suite()
    assert len(capped["validation"]) == len(full["validation"])
    assert {e.id for e in capped["train"]} <= {e.id for e in full["train"]}


@settings(max_examples=60, deadline=None)
@given(texts, st.integers(0, 3), st.randoms(use_true_random=False))
def test_split_is_a_partition_independent_of_order(inputs: list[str], seed: int, rng: random.Random) -> None:
    examples = [fake("t", text) for text in inputs]
    splits = hash_split.split_examples(examples, seed=seed, fractions=(0.6, 0.2, 0.2))
    ids = [e.id for split in SPLITS for e in splits[split]]
    assert sorted(ids) == sorted(e.id for e in examples)
    rng.shuffle(examples)
    assert hash_split.split_examples(examples, seed=seed, fractions=(0.6, 0.2, 0.2)) == splits
    for split in SPLITS:
        assert all(hash_split.split_of(e, (0.6, 0.2, 0.2), seed) == split for e in splits[split])


@settings(max_examples=30, deadline=None)
@given(texts, st.integers(1, 5))
def test_cap_takes_a_prefix_of_the_uncapped_split(inputs: list[str], cap: int) -> None:
    examples = [fake(task, text) for task in ("a", "b") for text in inputs]
    full = hash_split.split_examples(examples)
    capped = hash_split.split_examples(examples, max_per_split=cap)
    for split in SPLITS:
        for task in ("a", "b"):
            whole = [e for e in full[split] if e.task == task]
            assert [e for e in capped[split] if e.task == task] == whole[:cap]


def test_fractions_are_respected_on_many_examples() -> None:
    examples = [fake("t", str(i)) for i in range(20000)]
    sizes = {s: len(v) for s, v in hash_split.split_examples(examples, fractions=(0.7, 0.2, 0.1)).items()}
    assert abs(sizes["train"] - 14000) < 300
    assert abs(sizes["validation"] - 4000) < 250
    assert abs(sizes["test"] - 2000) < 200
    assert hash_split.split_examples(examples, fractions=(1.0, 0.0, 0.0))["train"].__len__() == 20000


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 400), st.integers(1, 150), st.randoms(use_true_random=False))
def test_a_small_task_s_test_split_is_topped_up_from_its_training_examples(size: int, minimum: int,
                                                                           rng: random.Random) -> None:
    examples = [fake("t", str(i)) for i in range(size)]
    plain = hash_split.split_examples(examples)
    topped = hash_split.split_examples(examples, min_test_per_task=minimum)
    wanted = max(len(plain["test"]), min(minimum, size // 3))
    assert len(topped["test"]) == wanted
    assert topped["validation"] == plain["validation"]  # only training examples move
    assert {e.id for e in plain["test"]} <= {e.id for e in topped["test"]}
    assert {e.id for e in topped["train"]} | {e.id for e in topped["test"]} == (
        {e.id for e in plain["train"]} | {e.id for e in plain["test"]})
    assert not {e.id for e in topped["train"]} & {e.id for e in topped["test"]}
    rng.shuffle(examples)
    assert hash_split.split_examples(examples, min_test_per_task=minimum) == topped  # independent of order
