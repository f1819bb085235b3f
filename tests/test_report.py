"""The markdown report and its figures, from synthetic results dicts shaped like ``compare``'s."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from radargate.experiment.report import plots
from radargate.experiment.report.comparison import comparison_table, write_report
from radargate.experiment.routing import summarize_routing
from tests.test_analysis import plain_stats, radar_stats

TASKS = ["social_iqa", "date_understanding"]


def method_result(name: str, acc: float, *, routing: dict | None = None, trained: bool = True) -> dict:
    history = [{"step": s, "loss": 2.5 - 0.02 * s, "lm_loss": 2.4, "lr": 1e-4, "tokens": 1024} for s in range(1, 21)]
    validation = [{"step": 10, "macro_acc": acc - 0.05}, {"step": 20, "macro_acc": acc - 0.0123}]
    return {
        "method": name,
        "trainable_params": 123456 if trained else 0,
        "train_time_s": 101.24 if trained else 0.0,
        "tokens_per_s": 950.4 if trained else None,
        "final_train_loss": 1.23449 if trained else None,
        "history": history if trained else [],
        "validation": validation if trained else [],
        "test": {
            "per_task": {"social_iqa": {"acc": acc, "acc_norm": acc + 0.0311, "n": 20},
                         "date_understanding": {"acc": acc + 0.1, "acc_norm": acc + 0.15, "n": 25}},
            "macro_acc": acc + 0.05, "macro_acc_norm": acc + 0.0906, "n": 45,
        },
        "routing": routing,
    }


def routing_summary(radar: bool) -> dict:
    if radar:
        stats = {f"model.layers.{i}.self_attn.q_proj": radar_stats(seed=i, tokens=30) for i in range(3)}
    else:
        weights = np.random.default_rng(0).dirichlet(np.ones(3), size=30)
        stats = {f"model.layers.{i}.mlp.down_proj": plain_stats(torch.from_numpy(weights)) for i in range(2)}
    return summarize_routing(stats, max_points=40)


@pytest.fixture(scope="module")
def results() -> dict:
    return {
        "name": "quickstart",
        "model": "smollm2-135m-instruct",
        "tasks": TASKS,
        "split_sizes": {"train": 800, "validation": 80, "test": 160},
        "hardware": "CPU: 2 cores, torch 2.13.0",
        "seed": 7,
        "steps": 30,
        "wall_time_s": 612.34,
        "methods": {
            "base": method_result("base", 0.3, trained=False),
            "lora": method_result("lora", 0.4),
            "softmax": method_result("softmax", 0.4234, routing=routing_summary(radar=False)),
            "radar": method_result("radar", 0.4567, routing=routing_summary(radar=True)),
        },
    }


@pytest.fixture(scope="module")
def report(results, tmp_path_factory) -> tuple[Path, str]:
    path = write_report(results, tmp_path_factory.mktemp("run"))
    return path, path.read_text()


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(path).shape
    assert height > 50 and width > 50


def table_rows(text: str, first_header: str) -> list[list[str]]:
    """Cells of the markdown table whose header starts with ``first_header``, without the header."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


# -- comparison table ----------------------------------------------------------------------------


def test_comparison_table_formats_each_number_as_specified(results):
    rows = {row[0]: row[1:] for row in table_rows(comparison_table(results), "method")}
    # params with separators, loss 3 decimals, accuracies in % with 1 decimal, time 1 decimal
    # no fit or answer NLL in this fixture: those columns show "-"
    assert rows["radar"] == ["123,456", "1.234", "-", "44.4", "50.7", "54.7", "-", "101.2", "950"]
    assert rows["softmax"][4] == "47.3"


def test_missing_pieces_render_as_dashes(results):
    rows = {row[0]: row[1:] for row in table_rows(comparison_table(results), "method")}
    assert rows["base"] == ["0", "-", "-", "-", "35.0", "39.1", "-", "0.0", "-"]
    sparse = {"methods": {"x": {"method": "x"}}}
    assert table_rows(comparison_table(sparse), "method") == [["x", *["-"] * 7]]  # no accuracy: NLL columns


def test_data_without_choices_is_reported_by_answer_nll_alone(tmp_path):
    """Completion and chat data (the quickstart's GSM8K) have no accuracy: no column or figure of dashes for it."""
    def scored(nll: float) -> dict:
        return {"test": {"per_task": {"gsm8k": {"acc": None, "acc_norm": None, "answer_nll": nll, "n": 20}},
                         "macro_acc": None, "macro_acc_norm": None, "macro_answer_nll": nll, "n": 20},
                "validation": [{"step": 32, "macro_acc": None, "macro_answer_nll": nll + 0.1}]}
    results = {"name": "q", "tasks": ["gsm8k"], "methods": {"lora": scored(1.04), "radar": scored(1.121)}}
    table = comparison_table(results)
    assert "acc" not in table.splitlines()[0] and "| val answer NLL (last eval) |" in table
    assert {row[0]: row[4:6] for row in table_rows(table, "method")} == {"lora": ["1.140", "1.040"],
                                                                         "radar": ["1.221", "1.121"]}
    text = write_report(results, tmp_path).read_text()
    assert table_rows(text, "task") == [["gsm8k", "1.040", "1.121", "20"], ["**macro**", "1.040", "1.121", "20"]]
    assert "## Test answer NLL per task" in text and "accuracy" not in text.lower().replace("accuracy in points", "")
    assert not (tmp_path / "plots" / "task_accuracy.png").exists()


def test_completion_data_is_reported_by_exact_match_beside_answer_nll_with_intervals(tmp_path):
    def scored(hits: list[float]) -> dict:
        examples = [{"task": "sums", "id": str(i), "acc": None, "acc_norm": None, "answer_nll": 1.0 - hit / 2,
                     "exact_match": hit} for i, hit in enumerate(hits)]
        em = sum(hits) / len(hits)
        return {"test": {"per_task": {"sums": {"acc": None, "answer_nll": 1.0, "exact_match": em, "n": len(hits)}},
                         "macro_acc": None, "macro_answer_nll": 1.0, "macro_exact_match": em, "n": len(hits),
                         "examples": examples}}
    results = {"name": "q", "tasks": ["sums"], "methods": {"softmax": scored([1.0, 0.0, 0.0, 1.0]),
                                                           "radar": scored([1.0, 1.0, 1.0, 1.0])}}
    table = comparison_table(results)
    header = [cell.strip() for cell in table.splitlines()[0].split("|")[1:-1]]
    assert header[header.index("test answer NLL") + 1] == "test exact match (%)"
    assert {row[0]: row[header.index("test exact match (%)")] for row in table_rows(table, "method")} == {
        "softmax": "50.0", "radar": "100.0"}
    text = write_report(results, tmp_path).read_text()
    difference = next(row for row in table_rows(text, "comparison") if row[2] == "exact_match")
    assert difference[:4] == ["radar - softmax", "test", "exact_match", "+50.0"]


# -- the report ----------------------------------------------------------------------------------


def test_header_states_model_data_hardware_steps_seed_and_time(report):
    text = report[1]
    for line in ["# radargate comparison: quickstart", "- **Model:** smollm2-135m-instruct",
                 "- **Tasks:** 2: social_iqa, date_understanding",
                 "- **Split sizes (examples):** train 800, validation 80, test 160",
                 "- **Hardware:** CPU: 2 cores, torch 2.13.0", "- **Training steps:** 30", "- **Seed:** 7",
                 "- **Wall time:** 612.3 s"]:
        assert line in text.splitlines()


def test_per_task_table_has_accuracy_per_method_and_n(report):
    rows = table_rows(report[1], "task")
    assert rows == [
        ["social_iqa", "30.0", "40.0", "42.3", "45.7", "20"],
        ["date_understanding", "40.0", "50.0", "52.3", "55.7", "25"],
        ["**macro**", "35.0", "45.0", "47.3", "50.7", "45"],
    ]


def test_every_linked_figure_exists_as_a_png(report):
    path, text = report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == sorted([
        "plots/loss_curves.png", "plots/task_accuracy.png", "plots/gate_weights_softmax.png",
        "plots/gate_weights_radar.png", "plots/angles_radar.png", "plots/contrast_radar.png",
    ])
    for link in links:
        assert_png(path.parent / link)
    assert sorted(p.name for p in path.parent.iterdir()) == ["plots", "report.md"]  # no temporary files left


def test_routing_sections_only_for_methods_with_routing(report, results):
    text = report[1]
    assert "## Routing: radar" in text and "## Routing: softmax" in text
    assert "## Routing: lora" not in text and "## Routing: base" not in text
    softmax_section = text.split("## Routing: softmax")[1].split("## Routing: radar")[0]
    assert "contrast" not in softmax_section.lower()


def test_per_layer_rho_table_reports_the_routing_numbers(report, results):
    routing = results["methods"]["radar"]["routing"]
    rows = {row[0]: row for row in table_rows(report[1], "layer")}
    assert list(rows) == list(routing)
    for name, layer in routing.items():
        contrast = layer["contrast"]
        assert rows[name] == [
            name, str(layer["tokens"]), f"{layer['theta_mean']:+.3f}", f"{layer['theta_abs_mean']:.3f}",
            f"{contrast['spearman_cos_before_vs_change']:+.3f}", f"{contrast['spearman_shuffled_theta_baseline']:+.3f}",
            f"{contrast['spearman_theta_vs_cos_before']:+.3f}", str(contrast["n"]),
        ]
    rhos = [layer["contrast"]["spearman_cos_before_vs_change"] for layer in routing.values()]
    assert f"mean ρ {np.mean(rhos):+.3f}" in report[1]
    assert f"ρ > 0 in {sum(r > 0 for r in rhos)}, ρ < 0 in {sum(r < 0 for r in rhos)}" in report[1]


def test_report_numbers_all_come_from_the_results(report, results):
    """Every number in the two result tables is one of the dict's values, formatted."""
    allowed = set()
    for method in results["methods"].values():
        test = method["test"]
        values = [test["macro_acc"], test["macro_acc_norm"], *(t["acc"] for t in test["per_task"].values())]
        values += [row["macro_acc"] for row in method["validation"][-1:]]
        allowed |= {f"{100 * v:.1f}" for v in values}
        allowed |= {f"{method['final_train_loss']:.3f}" if method["final_train_loss"] else "-",
                    f"{method['train_time_s']:.1f}", f"{method['trainable_params']:,}", "-",
                    f"{method['tokens_per_s']:,.0f}" if method["tokens_per_s"] else "-",
                    *(str(t["n"]) for t in test["per_task"].values()), str(test["n"])}
    cells = [cell for header in ("method", "task") for row in table_rows(report[1], header) for cell in row[1:]]
    assert cells and set(cells) <= allowed


def test_minimal_results_render_without_optional_parts(tmp_path):
    minimal = {"methods": {"lora": {"method": "lora", "test": {"per_task": {"t": {"acc": 0.25, "n": 4}},
                                                            "macro_acc": 0.25, "n": 4}}}}
    text = write_report(minimal, tmp_path).read_text()
    assert "Hardware" not in text and "Wall time" not in text and "Routing" not in text
    assert "| t | 25.0 | 4 |" in text
    assert "loss_curves.png" not in text
    assert_png(tmp_path / "plots" / "task_accuracy.png")


def test_undefined_rho_renders_as_a_dash(tmp_path):
    stats = radar_stats(tokens=8)
    for key in ("cos_before", "cos_after"):
        stats.samples[key][0][:] = 0.0  # as at initialisation: no output, no rank order
    results = {"methods": {"radar": {"routing": summarize_routing({"model.layers.0.q_proj": stats})}}}
    text = write_report(results, tmp_path).read_text()
    row = table_rows(text, "layer")[0]
    assert row[4] == "-" and row[6] == "-"
    assert "undefined in 1" in text
    assert_png(tmp_path / "plots" / "contrast_radar.png")


def test_report_is_rewritten_in_place(results, tmp_path):
    write_report(results, tmp_path)
    changed = copy.deepcopy(results)
    changed["methods"]["radar"]["test"]["macro_acc"] = 0.9876
    text = write_report(changed, tmp_path).read_text()
    assert "98.8" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots", "report.md"]


# -- figures on their own ------------------------------------------------------------------------


def test_each_figure_handles_empty_input(tmp_path):
    written = [
        plots.plot_loss_curves({"base": []}, tmp_path / "loss.png"),
        plots.plot_task_accuracy({}, tmp_path / "acc.png"),
        plots.plot_gate_weights({}, tmp_path / "gates.png", "none"),
        plots.plot_angle_histograms({"plain": {"tokens": 3, "mean_weight": [1.0]}}, tmp_path / "angles.png"),
        plots.plot_contrast({}, tmp_path / "contrast.png"),
    ]
    assert written == [tmp_path / name for name in ("loss.png", "acc.png", "gates.png", "angles.png", "contrast.png")]
    for path in written:
        assert_png(path)


def test_contrast_figure_draws_many_layers_as_small_multiples(tmp_path):
    stats = {f"model.layers.{i}.mlp.up_proj": radar_stats(seed=i, tokens=10) for i in range(9)}
    path = plots.plot_contrast(summarize_routing(stats, max_points=10), tmp_path / "contrast.png")
    assert_png(path)


def test_moving_average_is_a_trailing_mean_over_a_tenth_of_the_curve():
    values = np.arange(40, dtype=np.float64) ** 2
    smoothed = plots.moving_average(values)
    assert smoothed[0] == values[0]
    assert smoothed[-1] == pytest.approx(values[-4:].mean())
    np.testing.assert_array_equal(plots.moving_average(values[:5]), values[:5])


def test_pooled_histogram_sums_shared_bins_and_keeps_every_count():
    shared = {"edges": [0.0, 1.0, 2.0], "counts": [3, 4]}
    counts, edges = plots.pooled_histogram([shared, {"edges": [0.0, 1.0, 2.0], "counts": [1, 2]}])
    assert counts.tolist() == [4, 6] and edges.tolist() == [0.0, 1.0, 2.0]
    counts, edges = plots.pooled_histogram([shared, {"edges": [-2.0, 0.0, 2.0], "counts": [5, 1]}])
    assert counts.sum() == 13 and edges[0] == -2.0 and edges[-1] == 2.0


def test_layer_names_lose_only_their_shared_prefix_and_picks_span_the_depth():
    names = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    assert plots.short_layer_names(names) == ["0.self_attn.q_proj", "1.mlp.down_proj"]
    assert plots.short_layer_names(["a.b", "a.b"]) == ["b", "b"]
    items = [str(i) for i in range(12)]
    picked = plots.pick_evenly(items, 5)
    assert picked[0] == "0" and picked[-1] == "11" and len(picked) == 5
