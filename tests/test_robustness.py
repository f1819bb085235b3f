"""The robustness protocol: readings as methods, the held-out task rule, the hierarchical interval, the plan's
cells and the one choice it makes (the best reading, on validation data alone)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import radargate.experiment.cells as cells_module
from radargate.experiment import robustness
from radargate.experiment.cells import Cell, CellStore, cells_directory
from radargate.experiment.config import ExperimentConfig
from radargate.experiment.data.examples import MCExample
from radargate.experiment.data.held_out import _rank, held_out_tasks
from radargate.experiment.plan import best_reading, headline_cells, sweep_cells
from radargate.experiment.report.intervals import Difference, hierarchical_difference, paired_difference
from radargate.experiment.report.study.robustness import (
    Comparison,
    Found,
    _choice_text,
    _replay_text,
    _search_text,
    _verdict_text,
    compare,
)

STUDY = ["train.steps=2", "study.methods=[topk,radar]", "study.experts=[2,4]", "study.seeds=[0,1]",
         "study.lr_grid=[1e-3,1e-2]", "study.lr_experts=2", "study.lr_extend=0", "study.unseen_tasks=[navigate]"]
ROBUST = ["study.robustness.searched=[radar-sparse,radar-fusion,signed]",
          "study.robustness.compared=[topk,radar,signed]", "study.robustness.experts=[2,4]",
          "study.robustness.seeds=[0,1]", "study.robustness.seed_counts=[2,1]",
          "study.robustness.unseen_tasks=[navigate,snarks]", "study.robustness.unseen_subset=[navigate]"]


# -- readings as methods ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "setting", "value"), [("radar-sparse", "stretch", "topk"),
                                                          ("radar-fusion", "fusion", "input"),
                                                          ("radar-softplus", "stretch", "softplus")])
def test_a_reading_is_the_radar_gate_with_its_setting_and_round_trips(method, setting, value):
    config = ExperimentConfig.load(None, [f"method={method}"])
    assert config.adapter.gate == "radar" and getattr(config.adapter, setting) == value
    assert ExperimentConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    assert ExperimentConfig.load(None, ["method=radar"]).for_method(method).adapter == config.adapter


def test_a_reading_refuses_an_adapter_setting_that_contradicts_it():
    with pytest.raises(ValueError, match=r"adapter\.stretch='softplus' contradicts method='radar-sparse'"):
        ExperimentConfig.load(None, ["method=radar-sparse", "adapter.stretch=softplus"])
    with pytest.raises(ValueError, match=r"adapter\.gate='topk' contradicts method='radar-fusion'"):
        ExperimentConfig.load(None, ["method=radar-fusion", "adapter.gate=topk"])
    assert ExperimentConfig.load(None, ["method=radar-sparse", "adapter.stretch=topk"]).adapter.stretch == "topk"
    with pytest.raises(ValueError, match=r"adapter\.stretch='softplus' contradicts method='radar'.*"
                                         r"set method: radar-softplus"):
        ExperimentConfig.load(None, ["method=radar", "adapter.stretch=softplus"])


@pytest.mark.parametrize("start", ["radar-sparse", "radar-fusion", "radar-softplus"])
def test_switching_method_never_carries_one_readings_setting_into_another(start):
    config = ExperimentConfig.load(None, [f"method={start}"])
    for method in ("radar", "radar-sparse", "radar-fusion", "radar-softplus"):
        assert config.for_method(method).adapter == ExperimentConfig.load(None, [f"method={method}"]).adapter


def test_robustness_settings_refuse_what_the_protocol_cannot_run():
    with pytest.raises(ValueError, match=r"needs study\.lr_grid"):
        ExperimentConfig.load(None, [*STUDY, *ROBUST, "study.lr_grid=[]"])
    with pytest.raises(ValueError, match=r"compared holds \['softmax'\]"):
        ExperimentConfig.load(None, [*STUDY, *ROBUST, "study.robustness.compared=[softmax]"])
    with pytest.raises(ValueError, match="one count per entry"):
        ExperimentConfig.load(None, [*STUDY, *ROBUST, "study.robustness.seed_counts=[2]"])
    with pytest.raises(ValueError, match=r"unseen_subset names \['hyperbaton'\]"):
        ExperimentConfig.load(None, [*STUDY, *ROBUST, "study.robustness.unseen_subset=[hyperbaton]"])
    with pytest.raises(ValueError, match=r"searched names radar, the default reading"):
        ExperimentConfig.load(None, [*STUDY, *ROBUST, "study.robustness.searched=[radar,signed]"])


# -- the held-out rule ---------------------------------------------------------------------------------------


def _examples(task: str, count: int, choices: int = 2) -> list[MCExample]:
    return [MCExample(task, str(i), f"q{i}", f"q{i}", tuple(f"c{j}" for j in range(choices)),
                      tuple(float(j == 0) for j in range(choices)), 0) for i in range(count)]


def test_the_held_out_rule_drops_used_families_small_and_many_choice_tasks_and_takes_one_per_family():
    examples = {
        "kept": _examples("kept", 40),
        "trained/a": _examples("trained/a", 50), "trained/b": _examples("trained/b", 50),  # a used task's family
        "tiny": _examples("tiny", 29),  # too few examples
        "wide": _examples("wide", 50, choices=11),  # too many choices per example
        **{f"fam{i}/{s}": _examples(f"fam{i}/{s}", 30) for i in range(6) for s in ("x", "y", "z")},
    }
    chosen = held_out_tasks(examples, used=["trained/a"], keep=["kept"], families=4)
    assert chosen[0] == "kept" and len(chosen) == 5
    drawn = chosen[1:]
    assert {task.split("/")[0] for task in drawn} == set(sorted((f"fam{i}" for i in range(6)), key=_rank)[:4])
    for task in drawn:  # the family's member of smallest hash
        family = task.split("/")[0]
        assert task == min((f"{family}/{s}" for s in "xyz"), key=_rank)
    with pytest.raises(ValueError, match="share a family"):
        held_out_tasks(examples, used=["trained/a"], keep=["trained/b"], families=1)


# -- the hierarchical interval -------------------------------------------------------------------------------


def _evaluation(values: dict[tuple[str, str], float], metric: str = "answer_nll") -> dict:
    return {"examples": [{"task": task, "id": i, metric: value} for (task, i), value in values.items()]}


def test_hierarchical_interval_of_two_one_example_tasks_is_the_hand_computed_one():
    """Tasks differing by 1 and 0: resampling the two tasks gives means 0, 0.5, 1 with chances 1/4, 1/2, 1/4, so
    the 2.5th and 97.5th percentiles are 0 and 1."""
    a = _evaluation({("t1", "0"): 1.0, ("t2", "0"): 0.0})
    b = _evaluation({("t1", "0"): 0.0, ("t2", "0"): 0.0})
    result = hierarchical_difference([a], [b], "answer_nll")
    assert (result.mean, result.low, result.high, result.n) == (0.5, 0.0, 1.0, 2)


def test_hierarchical_interval_holds_the_seeds_which_pooling_hides():
    """One example, two seeds of a scoring 1 and 0: pooled per example the difference is exactly 0.5 (a point), while
    resampling the seeds gives 0, 0.5 or 1."""
    a = [_evaluation({("t", "0"): 1.0}), _evaluation({("t", "0"): 0.0})]
    b = [_evaluation({("t", "0"): 0.0})]
    flat = paired_difference(a, b, "answer_nll")
    nested = hierarchical_difference(a, b, "answer_nll")
    assert (flat.low, flat.high) == (0.5, 0.5)
    assert (nested.mean, nested.low, nested.high) == (0.5, 0.0, 1.0)


def test_hierarchical_interval_draws_a_seed_once_for_every_task():
    """Ten one-example tasks; a's seed 0 scores 1 on each of them and its seed 1 scores 0: one training run is better
    everywhere. Its seeds drawn once per resample, a resample takes that run twice, once or not at all: means 1, 0.5
    or 0 with chances 1/4, 1/2, 1/4, so the interval is [0, 1]. Seeds drawn afresh per task would average ten
    independent draws and narrow it to [0.3, 0.7], as if the lucky run were ten runs."""
    lucky = _evaluation({(f"t{task}", "0"): 1.0 for task in range(10)})
    unlucky = _evaluation({(f"t{task}", "0"): 0.0 for task in range(10)})
    result = hierarchical_difference([lucky, unlucky], [unlucky], "answer_nll")
    assert (result.mean, result.low, result.high) == (0.5, 0.0, 1.0)


def test_hierarchical_interval_widens_where_tasks_disagree():
    """Twenty examples each in two tasks: one task all +1, the other all 0. Examples resampled, the interval is
    narrow around 0.5; tasks resampled, it spans 0 to 1 and no longer excludes zero."""
    a = _evaluation({**{("t1", str(i)): 1.0 for i in range(20)}, **{("t2", str(i)): 0.0 for i in range(20)}})
    b = _evaluation({**{("t1", str(i)): 0.0 for i in range(20)}, **{("t2", str(i)): 0.0 for i in range(20)}})
    flat, nested = paired_difference([a], [b], "answer_nll"), hierarchical_difference([a], [b], "answer_nll")
    assert flat.verdict == "worse" and 0.3 < flat.low < flat.high < 0.7
    assert nested.verdict == "no detectable difference" and (nested.low, nested.high) == (0.0, 1.0)


def test_hierarchical_interval_refuses_sides_that_scored_different_examples():
    with pytest.raises(ValueError, match="different examples"):
        hierarchical_difference([_evaluation({("t", "0"): 1.0})], [_evaluation({("t", "1"): 1.0})], "answer_nll")


def test_comparison_keeps_the_examples_both_sides_scored():
    """The study's softmax cells scored the study six at 100 examples, the new cells at 40: compared on those 40."""
    old = {"examples": {"unseen": {"task": ["t"] * 3, "id": ["0", "1", "2"], "acc": [1, 1, 1],
                                   "answer_nll": [1.0, 1.0, 9.0]}}, "metrics": {"unseen": {}}}
    new = {"examples": {"unseen": {"task": ["t", "t", "u"], "id": ["0", "1", "0"], "acc": [1, 1, 1],
                                   "answer_nll": [0.5, 0.5, 0.0]}}, "metrics": {"unseen": {}}}
    result = compare([new], [old], "unseen", "answer_nll")
    assert result.flat.n == 2 and result.flat.mean == -0.5
    assert compare([new], [old], "unseen", "answer_nll", subset=["u"]) is None


# -- the plan and the choice of the best reading ---------------------------------------------------------------


def _record(cell: Cell, config: ExperimentConfig, validation: float, test: float = 0.0, unseen: float = 0.0) -> dict:
    """A cell file with a validation score and per-example test and unseen NLL (no training behind it)."""
    columns = {"task": ["t"], "id": ["0"], "acc": [1.0]}
    return {"cell": {"name": cell.name}, "config": cell.config(config).to_dict(), "failed": None,
            "unseen_settings": cells_module.unseen_settings(cell, config),
            "metrics": {"validation": [{"step": 2, "macro_answer_nll": validation}], "test": {}, "unseen": {}},
            "examples": {"test": {**columns, "answer_nll": [test]}, "unseen": {**columns, "answer_nll": [unseen]}}}


def _stores(tmp_path, validation: dict[tuple[str, float], float], *, test=None, unseen=None, settings=()):
    """The study's search cells and the robustness search cells, written with the given validation NLL; test and
    unseen NLL set adversarially (lowest where validation is highest) unless given."""
    config = ExperimentConfig.load(None, [*STUDY, *ROBUST, f"study.report_dir={tmp_path}", *settings])
    study_store, derived = CellStore(cells_directory(config)), robustness.robustness_config(config)
    store = CellStore(cells_directory(derived))
    for method, lr in [(m, lr) for m in ("topk", "radar") for lr in (1e-3, 1e-2)]:
        cell = Cell(method, 2, config.adapter.r, 0, lr)
        cells_module.write_record(study_store, _record(cell, config, validation.get((method, lr), 2.0)))
    for cell in robustness.search_cells(config):
        nll = validation[(cell.method, cell.lr)]
        cells_module.write_record(store, _record(cell, derived, nll, test=(test or {}).get(cell.method, -nll),
                                                 unseen=(unseen or {}).get(cell.method, -nll)))
    return config, study_store, store


def test_best_reading_has_the_lowest_validation_nll_and_ignores_test_and_unseen_scores(tmp_path):
    validation = {("radar", 1e-3): 1.5, ("radar", 1e-2): 1.1,
                  ("radar-sparse", 1e-3): 1.3, ("radar-sparse", 1e-2): 0.9,  # the lowest validation NLL
                  ("radar-fusion", 1e-3): 1.0, ("radar-fusion", 1e-2): 1.2,
                  ("signed", 1e-3): 0.1, ("signed", 1e-2): 0.2}  # not a reading: never the best reading
    config, study_store, store = _stores(tmp_path, validation, test={"radar-fusion": -50.0},
                                         unseen={"radar-fusion": -50.0})
    rates = robustness.rates(config, study_store, store)
    assert {m: rates[m] for m in ("radar", "radar-sparse", "radar-fusion", "signed")} == {
        "radar": 1e-2, "radar-sparse": 1e-2, "radar-fusion": 1e-3, "signed": 1e-3}
    scores = robustness.reading_scores(config, study_store, store, rates)
    assert scores == {"radar": 1.1, "radar-sparse": 0.9, "radar-fusion": 1.0}
    assert best_reading(scores) == "radar-sparse"  # although radar-fusion has the best test and unseen NLL


def test_the_search_is_read_at_its_own_first_seed_and_the_default_reading_at_the_studys(tmp_path):
    searched = ("radar-sparse", "radar-fusion", "signed")
    validation = {(method, lr): 1.0 + lr for method in searched for lr in (1e-3, 1e-2)}
    config, study_store, store = _stores(tmp_path, validation, settings=["study.robustness.seeds=[1,2]"])
    assert robustness.search_cells(config)[0].seed == 1
    scores = robustness.reading_scores(config, study_store, store, robustness.rates(config, study_store, store))
    assert scores == {"radar": 2.0, "radar-sparse": 1.001, "radar-fusion": 1.001}


def test_no_reading_is_chosen_on_part_of_the_evidence_and_a_tie_goes_to_the_default():
    assert best_reading({"radar": 1.0, "radar-sparse": None}) is None
    assert best_reading({"radar-sparse": 0.7, "radar": 0.7, "radar-fusion": 0.8}) == "radar"


def test_decisive_cells_run_the_best_reading_beside_the_compared_at_each_n_with_its_seeds(tmp_path):
    config = ExperimentConfig.load(None, [*STUDY, *ROBUST, f"study.report_dir={tmp_path}"])
    rates = {"topk": 1e-3, "radar": 1e-2, "signed": 1e-3, "radar-fusion": 1e-2}
    cells = robustness.decisive_cells(config, "radar-fusion", rates)
    methods = ("topk", "radar", "signed", "radar-fusion")
    assert [(c.method, c.n, c.seed) for c in cells] == [
        (m, n, s) for s, ns in ((0, (2, 4)), (1, (2,))) for n in ns for m in methods]
    assert all(c.lr == rates[c.method] for c in cells)
    assert len(robustness.decisive_cells(config, "radar", rates)) == 9  # the default reading is not run twice


def test_the_study_command_runs_the_protocol_and_reports_it(config_file, tmp_path):
    """Through the CLI on the tiny model: the search cells, the choice, the decisive cells (the chosen reading's
    search cell reused), the report's section; a second run trains nothing."""
    settings = ["train.steps=2", "study.methods=[radar]", "study.experts=[2]", "study.seeds=[0]",
                "study.axes=[fixed_r]", "study.lr_grid=[1e-2]", "study.lr_extend=0", "study.lr_experts=2",
                "study.unseen_tasks=[navigate]", "study.max_unseen_per_task=3",
                f"study.report_dir={tmp_path / 'reports'}",
                "study.robustness.searched=[radar-sparse,signed]", "study.robustness.compared=[radar,signed]",
                "study.robustness.experts=[2]", "study.robustness.seeds=[0]", "study.robustness.seed_counts=[1]",
                "study.robustness.unseen_tasks=[navigate,snarks]", "study.robustness.unseen_subset=[navigate]",
                "study.robustness.max_unseen_per_task=2"]
    command = [sys.executable, "-m", "radargate.cli", "study", "--config", str(config_file),
               *(f"--set={setting}" for setting in settings)]
    first = subprocess.run(command, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    robust = tmp_path / "reports" / "tiny_robustness_cells"
    names = {path.stem for path in robust.glob("*.json")}
    assert {"radar-sparse-n2-r2-s0-lr0.01", "signed-n2-r2-s0-lr0.01", "radar-n2-r2-s0-lr0.01"} <= names
    assert len(names) == 3  # the best reading's decisive cell is its search cell
    record = json.loads((robust / "signed-n2-r2-s0-lr0.01.json").read_text())
    assert set(record["examples"]["unseen"]["task"]) == {"navigate", "snarks"}  # the wider unseen set
    validation = {name: json.loads((robust / f"{name}.json").read_text())["metrics"]["validation"][-1]
                  ["macro_answer_nll"] for name in names}
    study_radar = json.loads((tmp_path / "reports" / "tiny_cells" / "radar-n2-r2-s0-lr0.01.json").read_text())
    scores = {"radar": study_radar["metrics"]["validation"][-1]["macro_answer_nll"],
              "radar-sparse": validation["radar-sparse-n2-r2-s0-lr0.01"]}
    report = (tmp_path / "reports" / "tiny.md").read_text()
    assert f"The best reading is **{best_reading(scores)}**." in report
    assert "## Robustness" in report and "signed - radar" in report and "radar-sparse - radar" not in report
    again = subprocess.run(command, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "done" not in again.stderr  # nothing trained the second time


def test_a_readings_search_cells_at_other_rates_are_not_taken_as_seeds():
    """Before the search has chosen a rate, a reading has no cell to compare; after, only the one at that rate."""
    cells = {Cell("radar-sparse", 8, 4, 0, lr): {"failed": None, "lr": lr} for lr in (0.001, 0.003)}
    found = Found(ExperimentConfig(), rates=None, scores={}, best=None, search=cells)
    assert found.records("radar-sparse", 8) == []
    found.rates = {"radar-sparse": 0.003}
    assert found.records("radar-sparse", 8) == [{"failed": None, "lr": 0.003}]


# -- the section's words -----------------------------------------------------------------------------------------


def _fit_record(nll: list[float]) -> dict:
    columns = {"task": ["t"] * len(nll), "id": [str(i) for i in range(len(nll))], "acc": [1.0] * len(nll),
               "answer_nll": nll}
    return {"failed": None, "metrics": {"fit": {}}, "examples": {"fit": columns}}


def test_a_reading_whose_every_rate_diverged_is_out_of_the_running():
    config = ExperimentConfig.load(None, [*STUDY, *ROBUST])
    search = {Cell("radar-sparse", 2, config.adapter.r, 0, lr): {"failed": "diverged"} for lr in (1e-3, 1e-2)}
    found = Found(config, rates={"radar-sparse": None, "radar-fusion": 1e-2, "signed": 1e-3},
                  scores={"radar": 1.0, "radar-fusion": 0.9}, best="radar-fusion", search=search)
    assert "| radar-sparse | diverged | diverged | every rate diverged: out of the running |" in _search_text(found)
    assert "Out of the running (every rate diverged): radar-sparse." in _choice_text(found)
    found.rates = None  # while the search runs, a reading without a rate is pending, not out
    assert _search_text(found).endswith("| pending |") and "Out of the running" not in _choice_text(found)


def test_the_verdict_says_by_how_much_and_on_how_many_seeds_a_reading_beats_top_k():
    config = ExperimentConfig.load(None, [*STUDY, *ROBUST])
    found = Found(config, rates={"radar-sparse": 1e-2}, scores={}, best=None,
                  search={Cell("radar-sparse", 2, config.adapter.r, 0, 1e-2): {"failed": None}})
    nll, acc = Difference("answer_nll", -0.05, -0.08, -0.02, 100), Difference("acc", 0.01, -0.02, 0.04, 100)
    table = {("radar-sparse", "topk", 2, "test NLL"): Comparison(nll, nll),
             ("radar-sparse", "topk", 2, "test acc"): Comparison(acc, acc)}
    text = _verdict_text(found, table)
    assert ("**Held-out examples**: reading radar-sparse at n=2 (test NLL -0.050 [-0.080, -0.020] / [-0.080, -0.020] "
            "better; test acc +1.0 [-2.0, +4.0] / [-2.0, +4.0] no diff.; 1 seed) beats the top-k gate") in text
    assert "**Fitting**: no reading of RadarGate beats the top-k gate" in text


def test_a_replay_that_step_4_calls_for_is_reported_against_the_studys_task_cells():
    """The best reading fits one of two tasks better than both gates (30 examples, all lower) and ties on the other."""
    config = ExperimentConfig.load(None, [*STUDY, *ROBUST, "study.headline_tasks=[social_iqa,strategyqa]",
                                          "study.headline_methods=[softmax,topk,radar]"])
    study_replay = {Cell(method, 2, 4, 0, 1e-2, task=task): _fit_record([1.0] * 30)
                    for method in ("softmax", "topk", "radar") for task in ("social_iqa", "strategyqa")}
    replay = {Cell("radar-sparse", 2, 4, 0, 1e-2, task="social_iqa"): _fit_record([0.5] * 30),
              Cell("radar-sparse", 2, 4, 0, 1e-2, task="strategyqa"): _fit_record([1.0] * 30)}
    found = Found(config, rates={}, scores={}, best="radar-sparse", search={}, replay=True, replay_cells=replay,
                  study_replay=study_replay)
    text = _replay_text(found, {})
    assert "so the 2-task replay ran for it" in text
    assert "radar-sparse fits better than every other gate in 1 of 2 tasks (50%" in text
    assert "against softmax better in 1, no detectable difference in 1, worse in 0" in text
    assert "against radar" not in text  # the default reading's replay is the study's, not compared here


# -- a design in blocks, and the best reading in the fitting experiment (the reasoning-gym protocol) -------------

GRIDS = ["study.methods=[lora,topk,radar,radar-sparse,signed]", "study.experts=[2,8,32]", "study.seeds=[0,1,2]",
         "study.grids=[{experts: [8], seeds: [0, 1, 2]}, {experts: [32], seeds: [0, 1]},"
         " {experts: [2], seeds: [0, 1], methods: [lora, topk, radar]}]"]


def test_grids_run_each_block_and_nothing_else():
    config = ExperimentConfig.load(None, GRIDS)
    rates = dict.fromkeys(config.study.methods, 1e-3)
    cells = {(cell.method, cell.n, cell.seed) for cell in sweep_cells(config, rates)["fixed_r"]}
    methods = config.study.methods
    expected = ({(m, 8, s) for m in methods for s in (0, 1, 2)} | {(m, 32, s) for m in methods for s in (0, 1)}
                | {(m, 2, s) for m in ("lora", "topk", "radar") for s in (0, 1)})
    assert cells == expected and len(cells) == 15 + 10 + 6


@pytest.mark.parametrize(("grid", "message"), [
    ("{experts: [4], seeds: [0]}", r"study\.grids names experts \[4\], which are not in study\.experts=\[2, 8, 32\]"),
    ("{experts: [8], seeds: [5]}", r"study\.grids names seeds \[5\]"),
    ("{experts: [8], seeds: [0], methods: [softmax]}", r"study\.grids names methods \['softmax'\]"),
    ("{experts: [8]}", r"needs experts and seeds")])
def test_a_grid_outside_the_studys_lists_is_named(grid, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.load(None, [*GRIDS[:3], f"study.grids=[{grid}]"])


def test_the_best_reading_joins_the_fitting_experiment_once_the_search_has_chosen_it(tmp_path):
    config = ExperimentConfig.load(None, [*GRIDS, "study.lr_grid=[1e-3,1e-2]", "study.lr_extend=0",
                                          "study.headline_tasks=[navigate]",
                                          "study.headline_methods=[topk,radar,best-reading]",
                                          f"study.report_dir={tmp_path}"])
    store = CellStore(cells_directory(config))
    rates = dict.fromkeys(config.study.methods, 1e-2)
    assert [cell.method for cell in headline_cells(config, rates, store)] == ["topk", "radar"]  # not chosen yet
    validation = {"radar": 1.0, "radar-sparse": 0.9, "topk": 0.1, "signed": 0.2}  # topk, signed: not readings
    for method, nll in validation.items():
        cells_module.write_record(store, _record(Cell(method, 8, config.adapter.r, 0, 1e-2), config, nll))
    assert [cell.method for cell in headline_cells(config, rates, store)] == ["topk", "radar", "radar-sparse"]
    cells_module.write_record(store, _record(Cell("radar", 8, config.adapter.r, 0, 1e-2), config, 0.5))
    assert [cell.method for cell in headline_cells(config, rates, store)] == ["topk", "radar"]  # radar is the best
