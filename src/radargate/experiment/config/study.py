"""The ``compare`` and ``study`` sections: runs of several methods, side by side or as the scaling sweep,
and the study's robustness protocol."""

from __future__ import annotations

from dataclasses import dataclass, field

from radargate.experiment.config.data import SourceSettings, refuse_repeated_names
from radargate.experiment.config.names import BASELINES, READINGS, method_names
from radargate.validation import require_choice, require_int


@dataclass
class CompareSettings:
    methods: list[str] = field(default_factory=lambda: ["lora", "softmax", "radar"])
    """The methods trained and compared, each with the same data, budget and seed."""

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("compare.methods=[] is not allowed; name at least one method")
        for method in self.methods:
            require_choice("compare.methods", method, method_names())


STUDY_AXES = ("fixed_r", "fixed_total_rank")
UNSEEN_SPLITS = ("all", "test")
UNSEEN_TASKS = ["navigate", "causal_judgment", "disambiguation_qa", "hyperbaton", "snarks", "movie_recommendation"]
"""BIG-bench multiple-choice tasks outside the training suite, for zero-shot generalisation."""


@dataclass
class RobustnessSettings:
    """Whether the study's answer survives other readings of RadarGate and the premise tested alone, by the
    protocol in ``docs/robustness-protocol.md`` (written before any of these cells ran;
    ``radargate.experiment.robustness`` runs it): the ``searched`` methods get the study's learning-rate search,
    the reading with the lowest validation answer NLL (``radar`` included) is the best reading, and it runs
    beside ``compared`` at each of ``experts`` with the first ``seed_counts`` seeds, scored zero-shot on a wider
    set of unseen tasks."""

    searched: list[str] = field(default_factory=lambda: [*READINGS, "signed"])
    """Methods given the study's learning-rate search (``study.lr_grid`` at ``study.lr_experts``, first seed)."""
    compared: list[str] = field(default_factory=lambda: ["topk", "radar", "signed"])
    """Methods run beside the best reading; a method the study itself searched keeps the study's rate."""
    experts: list[int] = field(default_factory=lambda: [8, 32])
    """Numbers of experts the compared methods run at."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds, of which each entry of ``experts`` runs the first ``seed_counts``."""
    seed_counts: list[int] = field(default_factory=lambda: [3, 2])
    """How many of ``seeds`` (the first ones) run at each of ``experts``, in order."""
    unseen_tasks: list[str] = field(default_factory=lambda: list(UNSEEN_TASKS))
    """The wider unseen set, chosen by ``radargate tasks --held-out`` (``radargate.experiment.data.held_out``)."""
    unseen_subset: list[str] = field(default_factory=lambda: list(UNSEEN_TASKS))
    """A named subset of ``unseen_tasks`` reported on its own: the study's original unseen tasks."""
    max_unseen_per_task: int = 40
    """Most examples scored per unseen task."""
    cells_dir: str = ""
    """Its cell files; empty: ``<report_dir>/<name>_robustness_cells``."""

    def __post_init__(self) -> None:
        for method in [*self.searched, *self.compared]:
            require_choice("study.robustness methods", method, [m for m in method_names() if m not in BASELINES])
        if "radar" in self.searched:
            raise ValueError("study.robustness.searched names radar, the default reading: its rate and score are the "
                             "study's own search's; search only the other readings and gates")
        for n in self.experts:
            require_int("study.robustness.experts", n, minimum=1)
        for seed in self.seeds:
            require_int("study.robustness.seeds", seed, minimum=0)
        if len(self.seed_counts) != len(self.experts):
            raise ValueError(f"study.robustness.seed_counts={self.seed_counts} needs one count per entry of "
                             f"study.robustness.experts={self.experts}")
        for count in self.seed_counts:
            require_int("study.robustness.seed_counts", count, minimum=1)
            if count > len(self.seeds):
                raise ValueError(f"study.robustness.seed_counts holds {count}, more than the {len(self.seeds)} "
                                 f"seeds of study.robustness.seeds={self.seeds}")
        missing = sorted(set(self.unseen_subset) - set(self.unseen_tasks))
        if missing:
            raise ValueError(f"study.robustness.unseen_subset names {missing}, which are not in its unseen_tasks")
        require_int("study.robustness.max_unseen_per_task", self.max_unseen_per_task, minimum=1)


BEST_READING = "best-reading"
"""In ``study.headline_methods``: the reading of RadarGate with the lowest validation answer NLL in the
learning-rate search (radar on a tie), known once that search has run."""


@dataclass
class GridSettings:
    """One block of the sweep: ``methods`` x ``experts`` x ``seeds`` (a design that is not one full product, such
    as fewer seeds at a large n, or a few methods at a small one, is several blocks)."""

    experts: list[int] = field(default_factory=list)
    """Numbers of experts, each one of ``study.experts``."""
    seeds: list[int] = field(default_factory=list)
    """Seeds, each one of ``study.seeds``."""
    methods: list[str] = field(default_factory=list)
    """Methods, each one of ``study.methods``; empty: all of them."""

    def __post_init__(self) -> None:
        if not (self.experts and self.seeds):
            raise ValueError(f"study.grids entry {self.experts=}, {self.seeds=} needs experts and seeds")


@dataclass
class StudySettings:
    """The scaling sweep of ``radargate study``: every method x experts x seed cell, per axis."""

    methods: list[str] = field(default_factory=lambda: ["lora", "softmax", "topk", "radar"])
    """The methods of the sweep (the untrained base model is scored too)."""
    experts: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32])
    """Numbers of experts n, each a column of the sweep."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds each method runs at each n."""
    grids: list[GridSettings] = field(default_factory=list)
    """The sweep's blocks (:class:`GridSettings`); empty: one block, every method x ``experts`` x ``seeds``."""
    axes: list[str] = field(default_factory=lambda: ["fixed_r"])
    """``fixed_r``: each expert keeps ``adapter.r``; ``fixed_total_rank``: ``r = total_rank / n``."""
    total_rank: int = 32
    """Axis ``fixed_total_rank``: the experts' ranks add up to this."""
    unseen_tasks: list[str] = field(default_factory=lambda: list(UNSEEN_TASKS))
    """BIG-bench multiple-choice tasks scored zero-shot; not used when ``unseen_sources`` are given."""
    unseen_sources: list[SourceSettings] = field(default_factory=list)
    """Instead of ``unseen_tasks``: sources scored zero-shot, the same kind as ``data.sources`` (a reasoning-gym
    generator, a file, ...): each is loaded and hash-split as a training source would be, and the examples that
    ``unseen_split`` names are scored (answer NLL, and exact match for completion rows)."""
    max_unseen_per_task: int = 50
    """Most examples scored per unseen task."""
    unseen_split: str = "all"
    """Which examples of an unseen task are scored: ``all`` (none was trained on, so every split is held out)
    or ``test`` (its test split only, 10% of the task)."""
    report_dir: str = "reports"
    """Where the study's report (``<name>.md``, CSV, JSON, plots) is written."""
    cells_dir: str = ""
    """One small JSON file per finished cell (``radargate.experiment.cells``), meant to be committed;
    the report is rebuilt from these files alone. Empty: ``<report_dir>/<name>_cells``."""
    lr_grid: list[float] = field(default_factory=list)
    """Learning rates each method tries at ``lr_experts`` experts (first seed); every cell of the method then
    trains at the rate with the lowest validation answer NLL. Empty: ``train.lr`` for every method."""
    lr_experts: int = 8
    """The number of experts at which the learning-rate search runs."""
    lr_extend: int = 1
    """Rates a method may try beyond the grid's end when its best rate lies there, one grid step at a time
    (``radargate.experiment.plan.searched_rates``); 0: the grid alone."""
    headline_tasks: list[str] = field(default_factory=list)
    """The paper's per-task fitting experiment: each task trained alone at ``headline_experts`` experts by
    each of ``headline_methods`` (first seed, ``headline_steps`` steps). Empty: skipped."""
    headline_methods: list[str] = field(default_factory=lambda: ["softmax", "topk", "radar"])
    """The methods of the per-task fitting experiment."""
    headline_experts: int = 8
    """The number of experts in the per-task fitting experiment."""
    headline_steps: int | None = None
    """Steps of a headline cell (``None``: ``train.steps``)."""
    robustness: RobustnessSettings | None = None
    """Other readings of RadarGate and the signed gate, by a pre-registered protocol; ``None``: not run."""

    def __post_init__(self) -> None:
        for method in self.methods:
            require_choice("study.methods", method, method_names())
        for axis in self.axes:
            require_choice("study.axes", axis, STUDY_AXES)
        for n in self.experts:
            require_int("study.experts", n, minimum=1)
        for seed in self.seeds:
            require_int("study.seeds", seed, minimum=0)
        if not (self.methods and self.experts and self.seeds and self.axes):
            raise ValueError("study.methods, study.experts, study.seeds and study.axes must not be empty")
        require_int("study.total_rank", self.total_rank, minimum=1)
        require_int("study.max_unseen_per_task", self.max_unseen_per_task, minimum=1)
        if self.unseen_sources:
            self._check_unseen_sources()
        require_choice("study.unseen_split", self.unseen_split, UNSEEN_SPLITS)
        for lr in self.lr_grid:
            if not lr > 0:
                raise ValueError(f"study.lr_grid holds lr={lr!r}; every learning rate must be > 0")
        for method in self.headline_methods:
            require_choice("study.headline_methods", method, [*(m for m in method_names() if m != "base"),
                                                              BEST_READING])
        for grid in self.grids:
            self._check_grid(grid)
        require_int("study.lr_experts", self.lr_experts, minimum=1)
        require_int("study.lr_extend", self.lr_extend, minimum=0)
        if len(self.lr_grid) == 1 and self.lr_extend:
            raise ValueError(f"study.lr_extend={self.lr_extend} needs two or more rates in study.lr_grid (a step "
                             "beyond the grid is the grid's own ratio); give more rates, or set study.lr_extend: 0")
        require_int("study.headline_experts", self.headline_experts, minimum=1)
        if self.headline_steps is not None:
            require_int("study.headline_steps", self.headline_steps, minimum=1)
        if self.robustness is not None:
            self._check_robustness(self.robustness)

    def _check_grid(self, grid: GridSettings) -> None:
        for name, values, allowed in (("experts", grid.experts, self.experts), ("seeds", grid.seeds, self.seeds),
                                      ("methods", grid.methods, self.methods)):
            outside = [value for value in values if value not in allowed]
            if outside:
                raise ValueError(f"study.grids names {name} {outside}, which are not in study.{name}={allowed}")

    def in_sweep(self, method: str, n: int, seed: int) -> bool:
        """Whether the sweep runs ``method`` at ``n`` experts with ``seed`` (every combination without grids)."""
        if not self.grids:
            return True
        return any(n in grid.experts and seed in grid.seeds and (not grid.methods or method in grid.methods)
                   for grid in self.grids)

    def _check_unseen_sources(self) -> None:
        """Unseen sources replace the BIG-bench unseen tasks: ``unseen_tasks`` left at its default becomes empty."""
        if self.unseen_tasks and self.unseen_tasks != UNSEEN_TASKS:
            raise ValueError(f"study.unseen_tasks={self.unseen_tasks!r} and study.unseen_sources are alternatives; "
                             "drop study.unseen_tasks to score the sources")
        self.unseen_tasks = []
        refuse_repeated_names("study.unseen_sources", self.unseen_sources)

    def _check_robustness(self, robustness: RobustnessSettings) -> None:
        """Its protocol chooses on the learning-rate search, and every compared method needs a rate from a search."""
        if not self.lr_grid:
            raise ValueError("study.robustness needs study.lr_grid: the best reading is chosen on the validation "
                             "scores of the learning-rate search")
        unrated = [m for m in robustness.compared if m not in self.methods and m not in robustness.searched]
        if unrated:
            raise ValueError(f"study.robustness.compared holds {unrated}, which neither study.methods nor "
                             "study.robustness.searched gives a learning rate; add them to one of the two")


