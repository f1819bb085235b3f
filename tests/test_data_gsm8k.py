"""GSM8K test set read from the cached wheel, and final-number extraction for exact match."""

from __future__ import annotations

import pytest

from radargate.experiment.data.gsm8k import GSM8KExample, extract_final_number, is_correct, load_gsm8k_test


@pytest.fixture(scope="module")
def test_set() -> list[GSM8KExample]:
    return load_gsm8k_test()


def test_test_set_loads_with_reference_answers(test_set: list[GSM8KExample]) -> None:
    assert len(test_set) == 1319
    first = test_set[0]
    assert first.question.startswith("Janet’s ducks lay 16 eggs per day.")
    assert first.answer == "18"
    assert first.prompt == f"Question: {first.question}\nAnswer:"
    assert all(is_correct(example.solution, example) for example in test_set)


def test_negative_answers_survive(test_set: list[GSM8KExample]) -> None:
    assert {"-10", "-3"} <= {example.answer for example in test_set}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#### 18", "18"),
        ("She pays 5 + 3 = 8 dollars.\n#### 8", "8"),
        ("first 7, then #### 1,000 apples", "1000"),
        ("The answer is $1,200.50.", "1200.5"),
        ("It is 18.", "18"),
        ("so the change is -2", "-2"),
        ("between 3-5 hours", "5"),
        ("2.000", "2"),
        ("-0.0", "0"),
        ("about .5 cups", "0.5"),
        ("no number here", None),
        ("#### ", None),
    ],
)
def test_extract_final_number(text: str, expected: str | None) -> None:
    assert extract_final_number(text) == expected


def test_is_correct_compares_numbers_not_strings() -> None:
    example = GSM8KExample(question="q", solution="#### 1200", answer="1200")
    assert is_correct("So she earns $1,200.00 in total.", example)
    assert not is_correct("So she earns $1,201 in total.", example)
    assert not is_correct("I do not know.", example)
