"""The scaling study on a tiny model with a few real examples: cells, resumption and the report."""

from __future__ import annotations

import json

import pytest
import yaml

import radargate.experiment.study as study_module
from radargate.cli import main
from radargate.experiment.config import ExperimentConfig
from radargate.experiment.report.study import _summary_table, verdicts
from radargate.experiment.study import Cell, aggregate, cell_row, cells

STUDY = [
    "train.steps=2", "study.methods=[softmax,radar]", "study.experts=[2,4]", "study.seeds=[0,1]",
    "study.axes=[fixed_r,fixed_total_rank]", "study.total_rank=4", "study.unseen_tasks=[navigate]",
    "study.max_unseen_per_task=3",
]


def test_cells_cover_the_grid_and_fixed_total_rank_divides_the_budget(config_file):
    config = ExperimentConfig.load(config_file, [*STUDY, "study.experts=[2,3,4]"])
    grid = cells(config)
    assert len([c for c in grid if c.axis == "fixed_r"]) == 2 * 3 * 2
    assert {c.n for c in grid if c.axis == "fixed_total_rank"} == {2, 4}  # 3 does not divide 4
    cell = next(c for c in grid if (c.axis, c.method, c.n, c.seed) == ("fixed_total_rank", "radar", 4, 1))
    cell_config = cell.config(config)
    assert (cell_config.adapter.r, cell_config.adapter.num_experts, cell_config.train.seed) == (1, 4, 1)
    assert cell_config.method == "radar" and cell_config.adapter.gate == "radar"


def test_verdicts_call_ties_within_a_standard_deviation():
    rows = [
        {"axis": "fixed_r", "method": m, "n": 2, "seed": s, "test_acc": acc, "final_train_loss": 1.0,
         "val_acc": None, "unseen_acc": 0.5, "trainable_params": 10, "train_time_s": 1.0, "mean_rho": None,
         "mean_rho_shuffled": None}
        for m, s, acc in [("radar", 0, 0.60), ("radar", 1, 0.62), ("softmax", 0, 0.50), ("softmax", 1, 0.52)]
    ]
    summary = aggregate(rows)
    assert verdicts(summary, "test_acc")[0].startswith("- fixed_r, n=2: radar wins over softmax")
    rows[0]["test_acc"], rows[1]["test_acc"] = 0.50, 0.54  # means 0.52 vs 0.51, std 0.028: a tie
    assert "ties with softmax" in verdicts(aggregate(rows), "test_acc")[0]
    losses = {("radar", 0): 0.80, ("radar", 1): 0.82, ("softmax", 0): 0.90, ("softmax", 1): 0.92}
    for row in rows:  # a lower training loss is the better fit
        row["final_train_loss"] = losses[(row["method"], row["seed"])]
    assert verdicts(aggregate(rows), "final_train_loss")[0] == (
        "- fixed_r, n=2: radar wins over softmax on final train loss (0.810 vs 0.910, gap -0.100, seed std up to 0.014)"
    )
    single_seed = [row for row in rows if row["seed"] == 0]
    assert "one seed: no spread to judge, no verdict" in verdicts(aggregate(single_seed), "test_acc")[0]


def test_study_runs_every_cell_writes_the_report_and_resumes(config_file, tmp_path, monkeypatch):
    report_dir = tmp_path / "reports"
    args = ["study", "--config", str(config_file), *[f"--set={o}" for o in STUDY],
            f"--set=study.report_dir={report_dir}"]
    assert main(args) == 0
    raw = json.loads((report_dir / "tiny.json").read_text())
    assert len(raw["cells"]) == 2 * 2 * 2 * 2  # axes x methods x experts x seeds
    trained = [path for path in (tmp_path / "runs" / "tiny").glob("*/result.json") if path.parent.name != "base"]
    assert len(trained) == 12  # n=2 has r=2 on both axes (total rank 4): those 4 cells are trained once
    report = (report_dir / "tiny.md").read_text()
    for entry in raw["summary"]:
        assert f"{100 * entry['test_acc']:.1f}" in report
    assert "## Where RadarGate wins, ties or loses" in report and "Contrastive analysis" in report
    assert (report_dir / "tiny_plots" / "fixed_r_test_acc.png").stat().st_size > 0
    unseen_section = report.split("## Unseen tasks")[1].split("##")[0]
    assert "| navigate | macro |" in unseen_section
    for entry in raw["summary"]:  # the per-task column is the mean of the cells' per-task accuracies
        assert f"{100 * entry['unseen_navigate']:.1f}" in unseen_section
    base = raw["base"]  # the untrained model, evaluated once on the same test split and unseen tasks
    assert f"| - | base | - | {100 * base['unseen_navigate']:.1f} |" in unseen_section
    assert f"base model scores {100 * base['test_acc']:.1f}%" in report
    for cell in ("radar-n4-r2-s0", "softmax-n4-r2-s0", "radar-n4-r1-s0"):  # largest n per axis, first seed
        assert f"## Routing: {cell}" in report
    assert (report_dir / "tiny_plots" / "contrast_radar-n4-r1-s0.png").stat().st_size > 0
    assert "## Routing: radar-n2" not in report
    assert all(row["unseen_acc"] is not None for row in raw["cells"])
    for cell in cells(ExperimentConfig.load(config_file, STUDY)):  # each cell trained what its name says
        folder = tmp_path / "runs" / "tiny" / cell.name
        saved = yaml.safe_load((folder / "config.yaml").read_text())
        adapter = json.loads((folder / "result.json").read_text())["adapter"]
        settings = (saved["method"], saved["adapter"]["num_experts"], saved["adapter"]["r"])
        assert settings == (cell.method, cell.n, cell.r)
        assert (adapter["gates"], adapter["num_experts"], adapter["r"]) == ([cell.method], [cell.n], [cell.r])

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(study_module, "evaluate_unseen", no_training)
    monkeypatch.setattr("radargate.experiment.run.train", no_training)
    assert main(args) == 0  # every cell done: only the report is rebuilt
    assert json.loads((report_dir / "tiny.json").read_text())["cells"] == raw["cells"]


def test_bad_study_settings_are_named(config_file):
    with pytest.raises(ValueError, match=r"study.axes='fixed'"):
        ExperimentConfig.load(config_file, ["study.axes=[fixed]"])


def test_a_failed_cell_is_counted_not_averaged():
    ok = {"test": {"macro_acc": 0.5}, "unseen": {"macro_acc": 0.4, "per_task": {}}, "final_train_loss": 1.0}
    rows = [cell_row(Cell("fixed_r", "radar", 2, 2, 0), ok),
            cell_row(Cell("fixed_r", "radar", 2, 2, 1), {"method": "radar", "failed": "training diverged"}),
            cell_row(Cell("fixed_r", "softmax", 2, 2, 0), {"method": "softmax", "failed": "training diverged"})]
    radar, softmax = aggregate(rows)
    assert (radar["seeds"], radar["failed"], radar["test_acc"], radar["test_acc_std"]) == (2, 1, 0.5, None)
    assert (softmax["seeds"], softmax["failed"], softmax.get("test_acc")) == (1, 1, None)
    table = _summary_table([radar, softmax])
    assert "| fixed_r | radar | 2 | 2 (1 failed) | 1.000 |" in table and "| 1 (1 failed) |" in table
    assert verdicts([radar, softmax], "test_acc") == []  # nothing to compare against
