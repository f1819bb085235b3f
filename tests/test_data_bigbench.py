"""BIG-bench loader: real tasks from the cached sdist (fetched on first run), splits, prompts and errors."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import radargate.experiment.data as data
from radargate.experiment.data import bigbench as bb


@pytest.fixture(scope="module")
def suite() -> dict[str, list[bb.MCExample]]:
    return bb.load_tasks(bb.DEFAULT_SUITE)


def fake(task: str, text: str, n_choices: int = 2) -> bb.MCExample:
    choices = tuple(f"c{i}" for i in range(n_choices))
    scores = tuple(float(i == 0) for i in range(n_choices))
    return bb.MCExample(task, f"{task}|{text}", text, text, choices, scores, 0)


texts = st.lists(st.text(max_size=12), min_size=1, max_size=60, unique=True)


# ------------------------------------------------------------------------------------------ real data


def test_default_suite_is_indexed_multiple_choice_and_loads(suite: dict[str, list[bb.MCExample]]) -> None:
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


def test_example_counts_after_deduplication(suite: dict[str, list[bb.MCExample]]) -> None:
    # Raw counts 1954/2290/2865/1000; the rest are exact duplicates, dropped as BIG-bench does.
    counts = {name: len(examples) for name, examples in suite.items()}
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


def test_list_tasks_has_subtask_names_and_no_parents() -> None:
    names = bb.list_tasks()
    assert "logical_deduction/three_objects" in names
    assert "logical_deduction" not in names
    assert "ascii_word_recognition" not in names  # generative only
    assert "ascii_word_recognition" in bb.list_tasks(multiple_choice_only=False)
    assert names == sorted(names) and len(names) > 300


def test_index_is_cached_next_to_the_tarball() -> None:
    tarball = bb.fetch_bigbench()
    index = tarball.parent / "index.json"
    before = index.stat().st_mtime_ns
    bb.list_tasks()
    assert index.stat().st_mtime_ns == before
    assert json.loads(index.read_text())["tarball_size"] == tarball.stat().st_size


def test_prompt_with_task_prefix_and_output_prefix(suite: dict[str, list[bb.MCExample]]) -> None:
    example = next(e for e in suite["sports_understanding"] if e.input == "Jamal Murray was perfect from the line")
    assert example.prompt == (
        "Determine whether the following statement or statements are plausible or implausible:"
        "\nStatement: Jamal Murray was perfect from the line\nPlausible/implausible? "
    )
    assert sorted(example.choices) == ["implausible", "plausible"]
    assert example.choices[example.answer] == "plausible"


def test_prompt_with_appended_choices_uses_default_prefixes(suite: dict[str, list[bb.MCExample]]) -> None:
    example = next(e for e in suite["social_iqa"] if e.input.startswith("Tracy didn't go home that evening"))
    choice_lines = "".join(f"\n  choice: {c}" for c in example.choices)
    assert example.prompt == f"Q: {example.input}{choice_lines}\nA: "
    assert example.choices[example.answer] == "Find somewhere to go"


def test_choices_not_appended_when_the_task_says_so(suite: dict[str, list[bb.MCExample]]) -> None:
    example = suite["date_understanding"][0]
    assert example.prompt == "Q: " + example.input + "\nA: "
    assert not any(choice in example.prompt for choice in example.choices)


def test_shuffled_choices_remove_the_first_position_bias(suite: dict[str, list[bb.MCExample]]) -> None:
    # date_understanding lists the right answer first in 364 of 369 examples.
    original = bb.load_task("date_understanding", shuffle_choices=False)
    assert sum(e.answer == 0 for e in original) > 350
    shuffled = suite["date_understanding"]
    assert max(Counter(e.answer for e in shuffled).values()) < 150
    assert [e.choices[e.answer] for e in shuffled] == [e.choices[e.answer] for e in original]


def test_scoring_pairs_move_trailing_space_to_the_choices(suite: dict[str, list[bb.MCExample]]) -> None:
    example = suite["strategyqa"][0]
    context, continuations = example.scoring_pairs()
    assert context.endswith("\nA:")
    assert continuations == tuple(" " + c for c in example.choices)
    assert [context + c for c in continuations] == [example.prompt + c for c in example.choices]


def test_task_outside_the_suite_is_extracted_on_demand() -> None:
    examples = bb.load_task("anachronisms")
    assert len(examples) > 100
    assert all(e.task == "anachronisms" for e in examples)


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
    with pytest.raises(RuntimeError, match=r"could not read the package index page http://127\.0\.0\.1:9/simple/bigbench/"):
        bb.fetch_bigbench(tmp_path)
    assert list((tmp_path / "bigbench").iterdir()) == []


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
        bb.split_examples([fake("t", "a")], fractions=fractions)


def test_cap_for_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown splits"):
        bb.split_examples([fake("t", "a")], max_per_split={"dev": 3})


# ------------------------------------------------------------------------------------------- splits


def test_suite_splits_are_deterministic_disjoint_and_complete(suite: dict[str, list[bb.MCExample]]) -> None:
    examples = [e for task in suite.values() for e in task]
    first = bb.load_suite()
    assert first == bb.load_suite()
    ids = {split: {e.id for e in first[split]} for split in bb.SPLITS}
    assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    assert set().union(*ids.values()) == {e.id for e in examples}
    shuffled = examples[:]
    random.Random(7).shuffle(shuffled)
    assert bb.split_examples(shuffled) == first


def test_split_sizes_are_pinned_across_machines(suite: dict[str, list[bb.MCExample]]) -> None:
    # Golden numbers: a change here means every saved result was made on different splits.
    splits = bb.split_examples(suite["date_understanding"])
    assert {s: len(v) for s, v in splits.items()} == {"train": 297, "validation": 32, "test": 40}
    splits = bb.split_examples(suite["date_understanding"], seed=1)
    assert {s: len(v) for s, v in splits.items()} != {"train": 297, "validation": 32, "test": 40}


def test_shared_inputs_share_a_split(suite: dict[str, list[bb.MCExample]]) -> None:
    examples = suite["logical_deduction/three_objects"]
    by_input: dict[str, set[str]] = {}
    for example in examples:
        by_input.setdefault(example.input, set()).add(bb.split_of(example))
    assert len(by_input) < len(examples)  # several questions per paragraph
    assert all(len(splits) == 1 for splits in by_input.values())


def test_caps_per_task_and_split_keep_a_stable_subset(suite: dict[str, list[bb.MCExample]]) -> None:
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
    splits = bb.split_examples(examples, seed=seed, fractions=(0.6, 0.2, 0.2))
    ids = [e.id for split in bb.SPLITS for e in splits[split]]
    assert sorted(ids) == sorted(e.id for e in examples)
    rng.shuffle(examples)
    assert bb.split_examples(examples, seed=seed, fractions=(0.6, 0.2, 0.2)) == splits
    for split in bb.SPLITS:
        assert all(bb.split_of(e, (0.6, 0.2, 0.2), seed) == split for e in splits[split])


@settings(max_examples=30, deadline=None)
@given(texts, st.integers(1, 5))
def test_cap_takes_a_prefix_of_the_uncapped_split(inputs: list[str], cap: int) -> None:
    examples = [fake(task, text) for task in ("a", "b") for text in inputs]
    full = bb.split_examples(examples)
    capped = bb.split_examples(examples, max_per_split=cap)
    for split in bb.SPLITS:
        for task in ("a", "b"):
            whole = [e for e in full[split] if e.task == task]
            assert [e for e in capped[split] if e.task == task] == whole[:cap]


def test_fractions_are_respected_on_many_examples() -> None:
    examples = [fake("t", str(i)) for i in range(20000)]
    sizes = {s: len(v) for s, v in bb.split_examples(examples, fractions=(0.7, 0.2, 0.1)).items()}
    assert abs(sizes["train"] - 14000) < 300
    assert abs(sizes["validation"] - 4000) < 250
    assert abs(sizes["test"] - 2000) < 200
    assert bb.split_examples(examples, fractions=(1.0, 0.0, 0.0))["train"].__len__() == 20000


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 400), st.integers(1, 150), st.randoms(use_true_random=False))
def test_a_small_task_s_test_split_is_topped_up_from_its_training_examples(size: int, minimum: int,
                                                                           rng: random.Random) -> None:
    examples = [fake("t", str(i)) for i in range(size)]
    plain = bb.split_examples(examples)
    topped = bb.split_examples(examples, min_test_per_task=minimum)
    wanted = max(len(plain["test"]), min(minimum, size // 3))
    assert len(topped["test"]) == wanted
    assert topped["validation"] == plain["validation"]  # only training examples move
    assert {e.id for e in plain["test"]} <= {e.id for e in topped["test"]}
    assert {e.id for e in topped["train"]} | {e.id for e in topped["test"]} == (
        {e.id for e in plain["train"]} | {e.id for e in plain["test"]})
    assert not {e.id for e in topped["train"]} & {e.id for e in topped["test"]}
    rng.shuffle(examples)
    assert bb.split_examples(examples, min_test_per_task=minimum) == topped  # independent of order


def test_a_study_config_gives_small_suite_tasks_100_test_examples(suite) -> None:
    examples = (example for task in suite.values() for example in task)
    splits = bb.split_examples(examples, max_per_split={"test": 100}, min_test_per_task=100)
    per_task = {task: sum(e.task == task for e in splits["test"]) for task in suite}
    assert per_task == dict.fromkeys(suite, 100)  # every default task has at least 300 examples
