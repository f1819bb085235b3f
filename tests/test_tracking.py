"""`train.report_to`: what the trackers receive, read back from TensorBoard's own event files."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from radargate.cli import main
from radargate.experiment.config import TrainSettings


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the run's TensorBoard event files: tag -> [(step, value)]."""
    series: dict[str, list[tuple[int, float]]] = {}
    for events in (run_dir / "tracking").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            series.setdefault(tag, []).extend((event.step, event.value) for event in accumulator.Scalars(tag))
    return series


def test_tensorboard_receives_losses_grad_norm_lr_throughput_and_routing_entropy(config_file, tmp_path):
    assert main(["train", "--config", str(config_file), "--set", "train.steps=3",
                 "--set", "train.report_to=[tensorboard]"]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    logged = scalars(run_dir)
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    for name in ("loss", "lm_loss", "grad_norm", "lr"):
        assert [step for step, _ in logged[name]] == [1, 2, 3]
        assert [value for _, value in logged[name]] == pytest.approx([row[name] for row in rows], rel=1e-6)
    assert [value for _, value in logged["aux/load_balance"]] == pytest.approx(
        [row["aux_losses"]["load_balance"] for row in rows], rel=1e-6)
    assert all(value > 0 for _, value in logged["tokens_per_s"])
    entropies = {tag: values for tag, values in logged.items() if tag.startswith("routing_entropy/")}
    assert len(entropies) == 4  # q_proj and v_proj of the tiny model's two layers
    # three experts: a routing distribution's entropy lies in (0, ln 3]
    assert all(0 < value <= 1.0987 for values in entropies.values() for _, value in values)


def test_no_tracker_by_default(config_file, tmp_path):
    assert main(["train", "--config", str(config_file), "--set", "train.steps=1"]) == 0
    assert not (tmp_path / "runs" / "tiny" / "tracking").exists()


def test_unknown_tracker_is_named_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"train.report_to='tensorbord' is unknown; choose one of .*tensorboard"):
        TrainSettings(report_to=["tensorbord"])


def test_a_tracker_that_is_not_installed_is_refused_before_training(config_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("radargate.experiment.tracking.get_available_trackers", lambda: [])
    assert main(["train", "--config", str(config_file), "--set", "train.report_to=[tensorboard]"]) != 0
    assert "not installed: tensorboard (pip install 'radargate[tracking]')" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tiny" / "log.jsonl").exists() or not (
        tmp_path / "runs" / "tiny" / "log.jsonl").read_text()
