"""A small stand-in for the BIG-bench sdist, in its exact layout, so the suite runs where the real one is missing.

The package index this project's machines reach stopped serving ``bigbench-1.0.0.tar.gz`` (its page lists only
0.0.1). Every test that needs *some* multiple-choice tasks (training, serving, bundles, the study) reads this
fixture instead: a gzip tarball of ``task.json`` files under ``bigbench-1.0.0/bigbench/benchmark_tasks/`` with
the schema and quirks the loader handles (task and output prefixes, choices not appended, subtasks under a parent
without examples, several questions on one input, an exact duplicate, a generative task). Its questions are
generated arithmetic and comparisons: test data, not a benchmark, and never reported as one. Tests of facts
about the real tasks (counts, pinned split sizes, real prompts) read the real sdist and are skipped, with that
reason, only where it cannot be had.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

from radargate.experiment.data.bigbench import DEFAULT_SUITE, SDIST

ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks"
EXAMPLES_PER_TASK = 150
QUESTIONS_PER_INPUT = 3

# Besides the default suite: every task a test or a shipped config names, so configs load unchanged.
EXTRA_TASKS = (
    "anachronisms", "navigate", "snarks", "hyperbaton", "causal_judgment", "disambiguation_qa",
    "movie_recommendation", "implicatures", "physics", "misconceptions", "metaphor_boolean", "ruin_names",
    "geometric_shapes", "analogical_similarity", "moral_permissibility", "tracking_shuffled_objects/three_objects",
    "temporal_sequences", "epistemic_reasoning",
)
PREFIXED_TASK = "sports_understanding"  # task and output prefixes, choices not appended
UNAPPENDED_TASK = "date_understanding"  # choices not appended, default prefixes
SHARED_INPUT_PARENT = "logical_deduction"
GENERATIVE_TASK = "ascii_word_recognition"


def write_fixture_sdist(folder: Path) -> Path:
    """Write the stand-in tarball as ``folder/bigbench-1.0.0.tar.gz`` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    tasks = {name: _task(name) for name in (*DEFAULT_SUITE, *EXTRA_TASKS)}
    tasks[SHARED_INPUT_PARENT] = {"name": SHARED_INPUT_PARENT, "subtasks": sorted(
        name for name in tasks if name.startswith(SHARED_INPUT_PARENT + "/"))}
    tasks[GENERATIVE_TASK] = {"name": GENERATIVE_TASK, "examples": [
        {"input": f"Spell {word}.", "target": word} for word in ("cat", "dog", "owl")]}
    path = folder / SDIST
    with tarfile.open(path, "w:gz") as archive:
        for name, task in sorted(tasks.items()):
            data = json.dumps(task, indent=1).encode("utf-8")
            member = tarfile.TarInfo(f"{ROOT}/{name}/task.json")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return path


def _task(name: str) -> dict:
    rng = random.Random(name)
    if name.startswith(SHARED_INPUT_PARENT + "/"):
        examples = _ordering_questions(rng, EXAMPLES_PER_TASK // QUESTIONS_PER_INPUT)
    else:
        examples = [_sum_question(rng) if i % 2 else _comparison(rng) for i in range(EXAMPLES_PER_TASK)]
        examples.append(dict(examples[0]))  # an exact duplicate, dropped as BIG-bench does
    task = {"name": name, "description": "radargate test fixture", "metrics": ["multiple_choice_grade"],
            "examples": examples}
    if name == PREFIXED_TASK:
        task.update(task_prefix="Decide whether the statement is true or false:", example_input_prefix="\nStatement: ",
                    example_output_prefix="\nTrue/false? ", append_choices_to_input=False)
    if name == UNAPPENDED_TASK:
        task["append_choices_to_input"] = False
    return task


def _comparison(rng: random.Random) -> dict:
    a, b = rng.sample(range(1, 100), 2)
    return {"input": f"Is {a} larger than {b}?", "target_scores": {"yes": int(a > b), "no": int(a < b)}}


def _sum_question(rng: random.Random) -> dict:
    a, b = rng.randrange(1, 50), rng.randrange(1, 50)
    wrong = rng.sample([a + b + d for d in (-3, -2, -1, 1, 2, 3)], 3)
    return {"input": f"What is {a} plus {b}?", "target_scores": {str(n): int(n == a + b) for n in [a + b, *wrong]}}


def _ordering_questions(rng: random.Random, paragraphs: int) -> list[dict]:
    """Several questions about one paragraph: examples that share an input must share a split."""
    examples = []
    for _ in range(paragraphs):
        heights = rng.sample(range(100, 200), 3)
        names = ("Ann", "Bo", "Cy")
        text = " ".join(f"{n} is {h} cm tall." for n, h in zip(names, heights, strict=True))
        order = sorted(names, key=dict(zip(names, heights, strict=True)).__getitem__)
        for rank, label in enumerate(("shortest", "middle", "tallest")):
            examples.append({"input": text, "target_scores": {
                f"{n} is the {label}": int(n == order[rank]) for n in names}})
    return examples
