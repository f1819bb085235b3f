"""The scaling study on a tiny model with a few real examples: the plan, cell files, resumption,
learning-rate selection and the report rebuilt from cell files alone."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import radargate.experiment.cells as cells_module
from radargate.cli import main
from radargate.experiment.cells import Cell, CellStore, cells_directory, evaluation
from radargate.experiment.config import ExperimentConfig
from radargate.experiment.plan import BASE, learning_rate_cells, learning_rates, pick_learning_rate, sweep_cells
from tests.conftest import write_tiny_config

STUDY = [
    "train.steps=2", "study.methods=[softmax,radar]", "study.experts=[2,4]", "study.seeds=[0,1]",
    "study.axes=[fixed_r,fixed_total_rank]", "study.total_rank=4", "study.unseen_tasks=[navigate]",
    "study.max_unseen_per_task=3", "study.lr_grid=[]",
]


def _study_args(config_file, tmp_path, *extra: str) -> list[str]:
    return ["study", "--config", str(config_file), *[f"--set={o}" for o in STUDY],
            f"--set=study.report_dir={tmp_path / 'reports'}", *extra]


def _scored_record(split: str, nll: list[float], task: str = "t", cell: Cell | None = None) -> dict:
    """A cell record with per-example answer NLL on one split, as the report reads it (no training behind it)."""
    columns = {"task": [task] * len(nll), "id": [str(i) for i in range(len(nll))], "acc": [0.0] * len(nll),
               "answer_nll": nll}
    record = {"failed": None, "metrics": {split: {}}, "examples": {split: columns}, "timings": {}}
    return record if cell is None else {**record, "cell": {**dataclasses.asdict(cell), "name": cell.name}}


def test_the_sweep_covers_the_grid_and_fixed_total_rank_divides_the_budget(config_file):
    config = ExperimentConfig.load(config_file, [*STUDY, "study.experts=[2,3,4]"])
    sweep = sweep_cells(config, {"softmax": 0.01, "radar": 0.01})
    assert len(sweep["fixed_r"]) == 2 * 3 * 2
    assert {c.n for c in sweep["fixed_total_rank"]} == {2, 4}  # 3 does not divide 4
    assert [c.seed for c in sweep["fixed_r"]] == sorted(c.seed for c in sweep["fixed_r"])  # one seed's grid first
    cell = next(c for c in sweep["fixed_total_rank"] if (c.method, c.n, c.seed) == ("radar", 4, 1))
    cell_config = cell.config(config)
    assert (cell_config.adapter.r, cell_config.adapter.num_experts, cell_config.train.seed) == (1, 4, 1)
    assert cell_config.method == "radar" and cell_config.adapter.gate == "radar"


def test_a_single_task_cell_trains_on_its_task_alone_for_its_steps(config_file):
    config = ExperimentConfig.load(config_file, STUDY)
    cell = Cell("softmax", 8, 2, 0, 0.003, "logical_deduction/three_objects", 7)
    cell_config = cell.config(config)
    assert cell_config.data.tasks == ["logical_deduction/three_objects"]
    assert (cell_config.train.steps, cell_config.train.lr, cell_config.adapter.num_experts) == (7, 0.003, 8)
    assert cell.name == "logical_deduction.three_objects-softmax-n8-r2-s0-lr0.003"


def test_learning_rate_selection_picks_the_lowest_validation_nll():
    assert pick_learning_rate({3e-4: 2.1, 1e-3: 1.7, 3e-3: 1.9}) == 1e-3
    assert pick_learning_rate({3e-4: 2.1, 1e-3: None, 3e-3: 2.0}) == 3e-3  # a diverged rate is never chosen
    assert pick_learning_rate({3e-4: 1.5, 1e-3: 1.5}) == 3e-4  # a tie goes to the smaller, safer rate
    assert pick_learning_rate({1e-3: None}) is None


def test_learning_rates_come_from_the_search_cell_files(config_file, tmp_path):
    config = ExperimentConfig.load(config_file, [*STUDY, "study.lr_grid=[3e-4,1e-3,3e-3]", "study.lr_experts=2",
                                                 f"study.report_dir={tmp_path}"])
    store = CellStore(cells_directory(config))
    search = learning_rate_cells(config)
    assert {(c.method, c.lr) for c in search} == {(m, lr) for m in ("softmax", "radar") for lr in (3e-4, 1e-3, 3e-3)}
    assert learning_rates(config, store) is None  # nothing has run: no rate yet
    validation = {("softmax", 3e-4): 2.0, ("softmax", 1e-3): 1.4, ("softmax", 3e-3): 1.6,
                  ("radar", 3e-4): 1.9, ("radar", 1e-3): 1.8, ("radar", 3e-3): 1.2}
    for cell in search:
        cells_module.write_record(store, _record(cell, config, validation[(cell.method, cell.lr)]))
    grid_only = ExperimentConfig.load(config_file, [*STUDY, "study.lr_grid=[3e-4,1e-3,3e-3]", "study.lr_experts=2",
                                                    f"study.report_dir={tmp_path}", "study.lr_extend=0"])
    assert learning_rates(grid_only, store) == {"softmax": 1e-3, "radar": 3e-3}


def test_a_damaged_cell_file_is_an_error_that_names_it(config_file, tmp_path):
    config = ExperimentConfig.load(config_file, [*STUDY, f"study.report_dir={tmp_path}"])
    store, cell = CellStore(cells_directory(config)), BASE
    store.path(cell).parent.mkdir(parents=True)
    store.path(cell).write_text('{"config": {"name": "tin')  # cut off mid-write by something other than radargate
    with pytest.raises(ValueError, match=rf"{re.escape(str(store.path(cell)))} is not valid JSON .*move it away"):
        store.load(cell, config)


def test_a_best_rate_at_the_grid_edge_is_searched_beyond_it(config_file, tmp_path):
    def load(extend: int) -> ExperimentConfig:
        return ExperimentConfig.load(config_file, [*STUDY, "study.lr_grid=[1e-3,3e-3,1e-2]", "study.lr_experts=2",
                                                   f"study.report_dir={tmp_path}", f"study.lr_extend={extend}"])

    store = CellStore(cells_directory(load(1)))

    def rates_with(extend: int):
        config = load(extend)
        return config, learning_rate_cells(config, store), learning_rates(config, store)

    config = load(1)
    validation = {("softmax", 1e-3): 2.0, ("softmax", 3e-3): 1.4, ("softmax", 1e-2): 1.2,  # best at the top edge
                  ("radar", 1e-3): 1.1, ("radar", 3e-3): 1.8, ("radar", 1e-2): 1.9}  # best at the bottom edge
    for cell in learning_rate_cells(config):
        cells_module.write_record(store, _record(cell, config, validation[(cell.method, cell.lr)]))
    config, search, rates = rates_with(1)
    assert {(c.method, c.lr) for c in search} - {(m, lr) for m, lr in validation} == {("softmax", 3e-2),
                                                                                     ("radar", 3e-4)}
    assert rates is None  # the rates beyond the edges have not run yet
    assert learning_rates(config, store, provisional=True) == {"softmax": 1e-2, "radar": 1e-3}  # for a report
    for cell, nll in ((Cell("softmax", 2, 2, 0, 3e-2), 1.0), (Cell("radar", 2, 2, 0, 3e-4), 1.5)):
        cells_module.write_record(store, _record(cell, config, nll))
    assert rates_with(1)[2] == {"softmax": 3e-2, "radar": 1e-3}  # one step out: softmax better again, radar not
    config, search, rates = rates_with(2)
    assert ("softmax", 0.09) in {(c.method, c.lr) for c in search} and rates is None  # a second step for softmax
    assert ("radar", 1e-4) not in {(c.method, c.lr) for c in search}  # radar's best is inside now


def _record(cell: Cell, config: ExperimentConfig, validation_nll: float) -> dict:
    return {"cell": {"name": cell.name}, "config": cell.config(config).to_dict(), "failed": None,
            "unseen_settings": cells_module.unseen_settings(cell, config),
            "metrics": {"validation": [{"step": 2, "macro_answer_nll": validation_nll}]}}


def test_a_cell_file_made_with_other_settings_is_refused(config_file, tmp_path):
    config = ExperimentConfig.load(config_file, [*STUDY, f"study.report_dir={tmp_path}"])
    store = CellStore(cells_directory(config))
    cell = Cell("radar", 2, 2, 0, 0.01)
    other = ExperimentConfig.load(config_file, [*STUDY, "train.warmup_steps=0"])
    cells_module.write_record(store, _record(cell, other, 1.0))
    with pytest.raises(ValueError, match=r"other settings.*train.warmup_steps: 0 -> 1"):
        store.load(cell, config)
    cells_module.write_record(store, _record(cell, config, 1.0))
    assert store.load(cell, config)["config"] == cell.config(config).to_dict()
    older = _record(cell, config, 1.0)  # made before data.min_test_per_task existed: its default applies
    del older["config"]["data"]["min_test_per_task"]
    cells_module.write_record(store, older)
    assert store.load(cell, config) is not None
    fewer_unseen = ExperimentConfig.load(config_file, [*STUDY, f"study.report_dir={tmp_path}",
                                                       "study.max_unseen_per_task=2"])
    with pytest.raises(ValueError, match=r"max_unseen_per_task: 3 -> 2"):  # its unseen scores would differ
        store.load(cell, fewer_unseen)


@pytest.fixture(scope="module")
def studied(tmp_path_factory, tiny_model_dir) -> Path:
    """The config file of the study of ``STUDY`` (13 cells), run once in its folder (``reports/``, ``runs/``) for the
    two tests below; the first removes ``runs/`` as a fresh clone lacks it, the second reads ``reports/`` only."""
    folder = tmp_path_factory.mktemp("study")
    config_file = write_tiny_config(folder, tiny_model_dir)
    assert main(_study_args(config_file, folder)) == 0
    return config_file


@pytest.mark.xdist_group("study")
def test_study_writes_cell_files_resumes_without_training_and_rebuilds_the_report(studied, monkeypatch):
    folder = studied.parent
    cells_dir = folder / "reports" / "tiny_cells"
    files = sorted(path.name for path in cells_dir.glob("*.json"))
    assert len(files) == 1 + 12  # base + 16 sweep cells, of which n=2 (r=2 on both axes) are shared
    record = json.loads((cells_dir / "radar-n4-r1-s1-lr0.01.json").read_text())
    assert record["config"]["adapter"]["num_experts"] == 4 and record["config"]["train"]["seed"] == 1
    test = evaluation(record, "test")
    assert len(test["examples"]) == test["n"] and {"acc", "answer_nll", "task", "id"} <= set(test["examples"][0])
    assert evaluation(record, "unseen")["n"] == 3 and evaluation(record, "fit")["n"] > 0
    assert record["timings"]["train_s"] > 0 and record["hardware"].startswith(("CPU", "GPU"))
    assert len(record["training"]["lm_loss"]) == 2
    report = (folder / "reports" / "tiny.md").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a cell with a result file was trained again")

    monkeypatch.setattr(cells_module, "run_or_record_failure", no_training)
    for path in (folder / "runs").iterdir():  # a fresh clone: cell files, no run folders
        subprocess.run(["rm", "-r", str(path)], check=True)
    assert main(_study_args(studied, folder)) == 0
    assert main(_study_args(studied, folder, "--report-only")) == 0
    assert (folder / "reports" / "tiny.md").read_text() == report
    assert sorted(path.name for path in cells_dir.glob("*.json")) == files


@pytest.mark.xdist_group("study")
def test_the_report_opens_with_the_answer_and_backs_it_with_intervals(studied):
    report = (studied.parent / "reports" / "tiny.md").read_text()
    sections = [line for line in report.splitlines() if line.startswith("## ")]
    assert sections[0] == "## The answer"
    answer = report.split("## The answer")[1].split("\n## ")[0]
    assert "n=4 vs softmax" in answer and "fit NLL" in answer and "unseen acc" in answer
    assert "By gate: against softmax better in" in answer and "; against topk better in" not in answer  # no top-k
    assert "## Every method against softmax, top-k and the base model (fixed_r)" in report
    assert "| 4 | radar - softmax |" in report and "| 2 | softmax - base |" in report
    assert "Does RadarGate's margin grow with n?" in report and "n=4 vs n=2" in report
    raw = json.loads((studied.parent / "reports" / "tiny.json").read_text())
    assert len(raw["cells"]) == 13 and all(row["wall_s"] > 0 for row in raw["cells"])
    for row in (row for row in raw["cells"] if row["part"] == "sweep"):  # the "why" section's routing numbers
        assert 1 / row["n"] - 1e-9 <= row["busiest_expert_share"] <= 1
        rho = row["contrast_rho"]  # undefined (None) where every cosine is equal, as after 2 steps at n = 2
        assert (rho is None or -1 <= rho <= 1) if row["method"] == "radar" else rho is None
    why = report.split("## Why")[1]
    assert "contrastive rho" in why and "- mean gradient norm: softmax (fixed_r) " in why and "(n = 2, 4)" in why
    measured = any(row["contrast_rho"] is not None for row in raw["cells"] if row["method"] == "radar")
    assert ("How RadarGate rotates" in answer) == measured


def test_a_time_limit_stops_before_the_next_cell_and_a_rerun_goes_on(config_file, tmp_path, capsys):
    assert main(_study_args(config_file, tmp_path, "--time-limit=0.001")) == 0
    assert "time limit reached" in capsys.readouterr().err
    assert [path.name for path in (tmp_path / "reports" / "tiny_cells").glob("*.json")] == ["base.json"]


def test_commit_commits_each_cell_file_alone(config_file, tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    subprocess.run(["git", "init", "-q", str(reports)], check=True)
    for key, value in (("user.email", "t@example.org"), ("user.name", "t")):
        subprocess.run(["git", "-C", str(reports), "config", key, value], check=True)
    (reports / "unrelated.txt").write_text("staged, not committed by the study")
    subprocess.run(["git", "-C", str(reports), "add", "unrelated.txt"], check=True)
    args = _study_args(config_file, tmp_path, "--commit")
    args[args.index("--set=study.seeds=[0,1]")] = "--set=study.seeds=[0]"
    assert main([*args, "--set=study.axes=[fixed_r]", "--set=study.experts=[2]"]) == 0
    log = subprocess.run(["git", "-C", str(reports), "log", "--format=%s", "--name-only"], capture_output=True,
                         text=True, check=True).stdout
    assert "study tiny: cell base (done)" in log and "tiny_cells/radar-n2-r2-s0-lr0.01.json" in log
    assert "unrelated.txt" not in log


def test_bad_study_settings_are_named(config_file):
    with pytest.raises(ValueError, match=r"study\.methods='gpt' is unknown"):
        ExperimentConfig.load(config_file, ["study.methods=[gpt]"])
    with pytest.raises(ValueError, match=r"study\.lr_extend=1 needs two or more rates in study\.lr_grid"):
        ExperimentConfig.load(config_file, ["study.lr_grid=[1e-3]"])
    with pytest.raises(ValueError, match=r"study\.lr_grid holds lr=-0\.001"):
        ExperimentConfig.load(config_file, ["study.lr_grid=[-1e-3]"])
    assert main(["study", "--config", str(config_file), "--workers=0"]) == 2


def test_base_cell_is_the_untrained_model():
    assert BASE.name == "base" and BASE.method == "base"


def assert_same_up_to_rounding(a, b, path: str = "") -> None:
    """Equal structure, text and integers; floats within 1e-4 relative (reductions ordered differently)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_up_to_rounding(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_up_to_rounding(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert isinstance(b, float) and math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_cells_run_in_worker_processes_match_cells_run_inline(config_file, tmp_path, capfd, monkeypatch):
    small = ["--set=study.seeds=[0]", "--set=study.axes=[fixed_r]", "--set=study.experts=[2]"]
    inline, parallel = tmp_path / "inline", tmp_path / "parallel"
    threads = torch.get_num_threads()
    assert main([*_study_args(config_file, inline, "--workers", "1", *small),
                 f"--set=output_dir={inline / 'runs'}"]) == 0
    # two threads to share out, and no OMP_NUM_THREADS (set for pytest's workers) for a worker to inherit instead
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    try:
        assert main([*_study_args(config_file, parallel, "--workers", "2", *small),
                     f"--set=output_dir={parallel / 'runs'}"]) == 0
    finally:
        torch.set_num_threads(threads)
    names = sorted(path.name for path in (inline / "reports" / "tiny_cells").glob("*.json"))
    assert names == ["base.json", "radar-n2-r2-s0-lr0.01.json", "softmax-n2-r2-s0-lr0.01.json"]
    for name in names:
        a, b = (json.loads((folder / "reports" / "tiny_cells" / name).read_text()) for folder in (inline, parallel))
        # the same numbers up to the float rounding of a different thread count (the workers run 1 thread each)
        assert_same_up_to_rounding(a["examples"], b["examples"])
        assert_same_up_to_rounding(a["training"], b["training"])
        if name != "base.json":  # the base cell is alone in its stage, so it runs in the study's own process
            assert b["hardware"].startswith("GPU") or ", 1 torch thread," in b["hardware"]  # 2 workers share 2
    assert "kernels-community" not in capfd.readouterr().err  # the CLI's log filter holds in the workers too


def test_the_headline_replay_trains_each_task_alone_and_counts_verdicts(config_file, tmp_path):
    from tests.conftest import PIPELINE_TASKS

    task = PIPELINE_TASKS[0]
    args = _study_args(config_file, tmp_path, "--set=study.seeds=[0]", "--set=study.axes=[fixed_r]",
                       "--set=study.experts=[2]", f"--set=study.headline_tasks=[{task}]",
                       "--set=study.headline_methods=[softmax,radar]", "--set=study.headline_experts=2",
                       "--set=study.headline_steps=3")
    assert main(args) == 0
    cell_file = tmp_path / "reports" / "tiny_cells" / f"{task.replace('/', '.')}-radar-n2-r2-s0-lr0.01.json"
    record = json.loads(cell_file.read_text())
    assert record["config"]["data"]["tasks"] == [task] and record["metrics"]["steps"] == 3
    assert "unseen" not in record["examples"] and evaluation(record, "fit")["n"] > 0
    headline = (tmp_path / "reports" / "tiny.md").read_text().split("## The paper's headline, replayed")[1]
    assert "RadarGate fits better than every other gate in" in headline and "of 1 tasks" in headline
    row = next(line for line in headline.splitlines() if line.startswith(f"| {task} |"))
    assert row.count("[") == 1 and any(word in row for word in ("better", "worse", "no diff."))


def test_the_study_command_runs_and_rebuilds_its_report_in_a_subprocess(config_file, tmp_path):
    args = [arg for arg in _study_args(config_file, tmp_path) if not arg.startswith("--set=study.seeds")]
    command = [sys.executable, "-m", "radargate.cli", *args, "--set=study.seeds=[0]", "--set=study.axes=[fixed_r]",
               "--set=study.experts=[2]", "--set=study.methods=[radar]"]
    first = subprocess.run(command, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "cell radar-n2-r2-s0-lr0.01 done" in first.stderr
    again = subprocess.run([*command, "--report-only"], capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "done" not in again.stderr  # nothing trained the second time
    assert again.stdout.strip() == f"report: {tmp_path / 'reports' / 'tiny.md'}"


def test_the_answer_checks_the_softmax_gates_rate_where_topk_keeps_every_expert(config_file):
    """At n <= k top-k is the softmax gate; trained at another rate, their difference is the rate's effect."""
    from radargate.experiment.report.study.answer import _learning_rate_check
    from radargate.experiment.report.study.gathered import Gathered

    config = ExperimentConfig.load(config_file, [*STUDY, "study.methods=[softmax,topk,radar]", "study.axes=[fixed_r]"])
    shift = {"softmax": 0.5, "topk": 0.0, "radar": 0.1}

    def record(method: str) -> dict:
        return _scored_record("test", [1.0 + shift[method] + 0.01 * (i % 5) for i in range(40)])

    def check(rates: dict[str, float]) -> str:
        sweep = {"fixed_r": {cell: record(cell.method) for cell in sweep_cells(config, rates)["fixed_r"]}}
        return _learning_rate_check(Gathered(config, None, rates, {}, sweep=sweep), "fixed_r")

    text = check({"softmax": 0.01, "topk": 0.003, "radar": 0.003})
    assert "at n=2 top-k keeps all 2 experts" in text and "(0.003) instead of the softmax gate's (0.01)" in text
    assert "by -0.500 [-0.500, -0.500] better, against -0.400 [-0.400, -0.400] better" in text
    assert check({"softmax": 0.003, "topk": 0.003, "radar": 0.003}) == ""  # same rate: nothing to separate


def test_the_plain_answer_needs_radargate_ahead_of_each_gate():
    from radargate.experiment.report.study.answer import _plainly

    def counts(better: int, worse: int, tied: int) -> dict[str, int]:
        return {"better": better, "worse": worse, "no detectable difference": tied}

    def total(*parts: dict[str, int]) -> dict[str, int]:
        return {key: sum(part[key] for part in parts) for key in parts[0]}

    ahead, behind = counts(4, 0, 6), counts(1, 2, 7)  # overall 5 better, 2 worse: still a no
    assert _plainly(total(ahead, behind), {"softmax": ahead, "topk": behind}).startswith("No: against topk")
    assert _plainly(total(ahead, ahead), {"softmax": ahead, "topk": ahead}).startswith("A mixed answer")
    clean = counts(5, 0, 0)
    assert _plainly(total(clean, clean), {"softmax": clean, "topk": clean}).startswith("Yes")


def test_the_headline_counts_each_gate_and_pools_every_task_into_one_interval(config_file):
    """Per task a verdict per gate; per gate the tally; and all tasks' fit examples as one paired interval."""
    from radargate.experiment.report.study.gathered import Gathered
    from radargate.experiment.report.study.headline import headline_counts

    config = ExperimentConfig.load(config_file, [*STUDY, "study.headline_tasks=[a,b,c,d]",
                                                 "study.headline_methods=[softmax,topk,radar]"])
    shift = {("a", "softmax"): 0.2, ("b", "softmax"): 0.2, ("c", "softmax"): 0.0,
             ("a", "topk"): -0.1, ("b", "topk"): 0.0, ("c", "topk"): 0.0}

    def record(task: str, method: str) -> dict:
        return _scored_record("fit", [1.0 + shift.get((task, method), 0.0) + 0.01 * (i % 7) for i in range(30)], task)

    headline = {Cell(method, 8, 4, 0, 0.003, task, 60): record(task, method)
                for task in "abc" for method in ("softmax", "topk", "radar")}
    text = headline_counts(Gathered(config, None, {}, {}, headline=headline))
    assert "better than every other gate in 0 of 3 tasks (0%" in text and "worse than at least one in 1" in text
    assert "against softmax better in 2, no detectable difference in 1, worse in 0" in text
    assert "against topk better in 0, no detectable difference in 2, worse in 1" in text
    pooled = re.findall(r"all 3 tasks pooled: ([-+.\d]+) \[([-+.\d]+), ([-+.\d]+)\] (\w+)", text)
    (softmax_mean, softmax_low, _, softmax_word), (topk_mean, _, topk_high, topk_word) = pooled
    assert (softmax_mean, softmax_word) == ("-0.133", "better") and float(softmax_low) < -0.133
    assert (topk_mean, topk_word) == ("+0.033", "worse") and float(topk_high) > 0.033
    assert text.endswith("Only 3 of the 4 tasks have finished; rerun the study command for the rest.")


def test_the_answer_names_a_verdict_whose_seeds_point_different_ways(config_file):
    """Bootstrap intervals resample examples; a verdict that one seed reverses is named as resting on the seed."""
    from radargate.experiment.report.study.answer import answer_section
    from radargate.experiment.report.study.gathered import Gathered

    config = ExperimentConfig.load(config_file, [*STUDY, "study.methods=[softmax,topk,radar]", "study.axes=[fixed_r]"])
    rates = {"softmax": 0.003, "topk": 0.003, "radar": 0.003}

    def answer(radar_shift_by_seed: dict[int, float]) -> str:
        def record(cell: Cell) -> dict:
            shift = radar_shift_by_seed[cell.seed] if cell.method == "radar" else 0.0
            return _scored_record("test", [1.0 + shift + 0.01 * (i % 5) for i in range(40)], cell=cell)

        sweep = {"fixed_r": {cell: record(cell) for cell in sweep_cells(config, rates)["fixed_r"]}}
        return answer_section(Gathered(config, None, rates, {}, sweep=sweep))

    split = answer({0: -0.05, 1: 0.3})
    assert "n=4 vs topk +0.125 [+0.125, +0.125] worse" in split
    assert "not shared by the seeds" in split and "test NLL n=4 vs topk (seed 0 -0.050, seed 1 +0.300)" in split
    assert "not shared by the seeds" not in answer({0: 0.1, 1: 0.3})


def test_the_margins_growth_uses_the_largest_n_that_has_finished(config_file):
    """A study under way (the plan's largest n not run yet) compares the smallest and largest finished n."""
    from radargate.experiment.report.study.differences import growth_lines
    from radargate.experiment.report.study.gathered import Gathered

    config = ExperimentConfig.load(config_file, [*STUDY, "study.methods=[softmax,radar]", "study.axes=[fixed_r]",
                                                 "study.experts=[2,4,8]", "study.seeds=[0]"])
    rates = {"softmax": 0.003, "radar": 0.003}
    radar_shift = {2: 0.0, 4: -0.2}

    def record(cell: Cell) -> dict | None:
        if cell.n == 8:
            return None  # not run yet
        shift = radar_shift[cell.n] if cell.method == "radar" else 0.0
        return _scored_record("test", [1.0 + shift + 0.01 * (i % 5) for i in range(40)], cell=cell)

    sweep = {"fixed_r": {cell: record(cell) for cell in sweep_cells(config, rates)["fixed_r"]}}
    lines = growth_lines(Gathered(config, None, rates, {}, sweep=sweep), "fixed_r", ("test", "answer_nll"))
    assert lines == ["- vs softmax, test answer nll, n=4 vs n=2: -0.200 [-0.200, -0.200] better"]
