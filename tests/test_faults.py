"""Faults, end to end through the installed ``radargate`` command in subprocesses: kills during training
and mid-checkpoint, a full or read-only disk, damaged files, a diverging run (tiny model), and a run of
the real default model that ends while diverging.

Deterministic kills go through a small launcher that runs the same ``radargate.cli.main`` with one
function wrapped to SIGKILL the process at a chosen point (``KILLER`` below); nothing in the library
knows about it.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_tiny_config

RADARGATE = Path(sys.executable).with_name("radargate")
QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"

KILLER = r"""
import os, signal, sys
from pathlib import Path
import radargate.experiment.train as train

mode, when = sys.argv[1], int(sys.argv[2])
saves = []
real_save, real_write, real_rename = train._Trainer.save_checkpoint, train.atomic_write_bytes, Path.rename

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def save_checkpoint(self, state):
    saves.append(state.step)
    real_save(self, state)
    if mode == "after-checkpoint" and len(saves) == when:
        die()

def half_written(path, data):
    if mode == "mid-weights" and len(saves) == when and path.name == "trainable.safetensors":
        path.write_bytes(data[: len(data) // 2])
        die()
    real_write(path, data)

def rename(self, target):
    if mode == "between-renames" and len(saves) == when and Path(target).name == "checkpoint":
        die()
    return real_rename(self, target)

train._Trainer.save_checkpoint = save_checkpoint
train.atomic_write_bytes = half_written
Path.rename = rename
from radargate.cli import main
sys.exit(main(sys.argv[3:]))
"""


def radargate(*args: str, killer: tuple[str, int] | None = None, preexec=None, prefix: tuple[str, ...] = (),
              env: dict[str, str] | None = None):
    command = [sys.executable, "-c", KILLER, killer[0], str(killer[1])] if killer else [str(RADARGATE)]
    return subprocess.run([*prefix, *command, *args], capture_output=True, text=True, timeout=600,
                          preexec_fn=preexec, env={**os.environ, **(env or {})})


def refuse_constant(constant: str) -> None:
    raise AssertionError(f"the non-JSON constant {constant} was written")


def strict_rows(path: Path) -> list[dict]:
    """JSON lines parsed strictly: a NaN or Infinity literal fails the test."""
    return [json.loads(line, parse_constant=refuse_constant) for line in path.read_text().splitlines()]


def losses(run_dir: Path) -> list[float]:
    return [row["loss"] for row in strict_rows(run_dir / "log.jsonl")]


def train_args(config_file: Path, name: str, *extra: str) -> list[str]:
    return ["train", "--config", str(config_file), "--set", f"name={name}", *extra]


LONG = ("--set", "train.steps=8", "--set", "train.save_every=2")


@pytest.fixture
def runs(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir) -> Path:
    """The run that every interrupted one must reproduce (its folder: losses and adapter)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    done = radargate(*train_args(write_tiny_config(folder, tiny_model_dir), "whole", *LONG))
    assert done.returncode == 0, done.stderr
    return folder / "runs" / "whole"


@pytest.fixture(scope="module")
def first_checkpoint(tmp_path_factory, tiny_model_dir) -> Path:
    """A run of ``LONG`` killed right after its first checkpoint, made once: the tests that damage it or take its
    write permission work on copies (``copy_run``)."""
    folder = tmp_path_factory.mktemp("first-checkpoint")
    args = train_args(write_tiny_config(folder, tiny_model_dir), "killed", *LONG)
    assert radargate(*args, killer=("after-checkpoint", 1)).returncode == -signal.SIGKILL
    return folder / "runs" / "killed"


def copy_run(run_dir: Path, runs: Path, name: str) -> Path:
    """``run_dir`` as the run ``name`` in ``runs`` (a resumed run checks its settings, not its folder or name)."""
    return Path(shutil.copytree(run_dir, runs / name))


@pytest.mark.xdist_group("faults-uninterrupted")
def test_sigkill_during_training_then_resume_equals_the_uninterrupted_run(config_file, runs, uninterrupted):
    args = train_args(config_file, "killed", "--set", "train.steps=8", "--set", "train.save_every=2")
    process = subprocess.Popen([str(RADARGATE), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = runs / "killed" / "log.jsonl"
    while process.poll() is None and not (log.is_file() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (runs / "killed" / "result.json").exists()
    resumed = radargate(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert losses(runs / "killed") == losses(uninterrupted)
    adapter = Path("adapter") / "molora_model.safetensors"
    assert (runs / "killed" / adapter).read_bytes() == (uninterrupted / adapter).read_bytes()


@pytest.mark.xdist_group("faults-uninterrupted")
@pytest.mark.parametrize("mode", ["mid-weights", "between-renames"])
def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(config_file, runs, uninterrupted, mode):
    args = train_args(config_file, "killed", *LONG)
    killed = radargate(*args, killer=(mode, 2))
    assert killed.returncode == -signal.SIGKILL
    run_dir = runs / "killed"
    previous = run_dir / ("checkpoint" if mode == "mid-weights" else "checkpoint.old")
    saved = torch.load(previous / "trainer_state.pt", weights_only=True)
    assert saved["state"]["step"] == 2  # the first checkpoint, whole and readable
    assert load_file(str(previous / "trainable.safetensors"))
    resumed = radargate(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert losses(run_dir) == losses(uninterrupted)
    assert not any(run_dir.glob("checkpoint.*")), "leftover partial checkpoint folders"


def limit_file_size(limit: int):
    """A disk that fills up at ``limit`` bytes per file: writes beyond it fail with EFBIG."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_during_a_checkpoint_is_a_clear_error_and_keeps_the_previous_one(config_file, runs):
    args = train_args(config_file, "full", *LONG, "--set", "adapter.num_experts=8", "--set", "adapter.r=8")
    assert radargate(*args, killer=("after-checkpoint", 1)).returncode == -signal.SIGKILL
    checkpoint = runs / "full" / "checkpoint"
    before = {path.name: path.read_bytes() for path in checkpoint.iterdir()}
    small = max((runs / "full" / name).stat().st_size for name in ("config.yaml", "log.jsonl")) + 4096
    assert len(before["trainable.safetensors"]) > small  # so the checkpoint is what overflows
    full = radargate(*args, "--resume", preexec=limit_file_size(small))
    assert full.returncode == 1
    assert "could not write or read" in full.stderr and "disk full" in full.stderr
    assert "Traceback" not in full.stderr
    assert {path.name: path.read_bytes() for path in checkpoint.iterdir()} == before
    assert not (runs / "full" / "checkpoint.tmp").exists()
    resumed = radargate(*args, "--resume")  # space again: the run goes on from the kept checkpoint
    assert resumed.returncode == 0, resumed.stderr


def compare_args(config_file: Path) -> list[str]:
    return ["compare", "--config", str(config_file), "--set", "train.steps=2",
            "--set", "compare.methods=[base,radar,lora]"]


def report_files(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in ("results.json", "report.md")}


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_model_dir) -> Path:
    """The runs folder of a finished ``compare`` (``compare_args``), made once: the tests that fill the disk under
    its report, take its write permission or damage a method's adapter work on copies."""
    folder = tmp_path_factory.mktemp("compared")
    assert radargate(*compare_args(write_tiny_config(folder, tiny_model_dir))).returncode == 0
    return folder / "runs"


@pytest.mark.xdist_group("faults-compared")
def test_full_disk_during_a_report_keeps_the_previous_report(config_file, runs, compared):
    shutil.copytree(compared, runs)
    before = report_files(runs / "tiny")
    full = radargate(*compare_args(config_file), preexec=limit_file_size(1024))
    assert full.returncode == 1 and "could not write or read" in full.stderr and "Traceback" not in full.stderr
    assert report_files(runs / "tiny") == before
    assert not list((runs / "tiny").glob(".*.tmp"))


@pytest.mark.xdist_group("faults-compared")
def test_a_damaged_result_file_is_named_when_compare_reads_it_back(config_file, runs, compared):
    shutil.copytree(compared, runs)
    result = runs / "tiny" / "radar" / "result.json"
    result.write_text(result.read_text()[:50])
    refused = radargate(*compare_args(config_file))
    assert refused.returncode == 2, refused.stderr
    assert f"{result} is not valid JSON" in refused.stderr and "Traceback" not in refused.stderr


def read_only(path: Path) -> None:
    for item in [path, *path.rglob("*")]:
        item.chmod(item.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def without_root_override() -> tuple[str, ...]:
    """root writes into read-only folders anyway; drop that power (as every other user lacks it)."""
    if os.geteuid() != 0:
        return ()
    assert shutil.which("setpriv"), "running as root, the read-only test needs setpriv (util-linux)"
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--")


@pytest.mark.xdist_group("faults-compared")
def test_read_only_output_folder_is_a_clear_error(config_file, runs, compared):
    shutil.copytree(compared, runs)
    before = report_files(runs / "tiny")
    read_only(runs)
    try:
        refused = radargate(*compare_args(config_file), prefix=without_root_override())
    finally:
        for item in [runs, *runs.rglob("*")]:
            item.chmod(item.stat().st_mode | stat.S_IWUSR)
    assert refused.returncode == 1
    assert "Permission denied" in refused.stderr and "read-only" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert report_files(runs / "tiny") == before


@pytest.mark.xdist_group("faults-first-checkpoint")
def test_read_only_run_folder_stops_a_resumed_run_cleanly(config_file, runs, first_checkpoint):
    args = train_args(config_file, "frozen", *LONG)
    copy_run(first_checkpoint, runs, "frozen")
    checkpoint = {p.name: p.read_bytes() for p in (runs / "frozen" / "checkpoint").iterdir()}
    read_only(runs)
    try:
        refused = radargate(*args, "--resume", prefix=without_root_override())
    finally:
        for item in [runs, *runs.rglob("*")]:
            item.chmod(item.stat().st_mode | stat.S_IWUSR)
    assert refused.returncode == 1 and "Permission denied" in refused.stderr and "Traceback" not in refused.stderr
    assert {p.name: p.read_bytes() for p in (runs / "frozen" / "checkpoint").iterdir()} == checkpoint


@pytest.mark.xdist_group("faults-first-checkpoint")
@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_damaged_checkpoint_is_named_on_resume(config_file, runs, first_checkpoint, damage):
    args = train_args(config_file, "damaged", *LONG)
    copy_run(first_checkpoint, runs, "damaged")
    weights = runs / "damaged" / "checkpoint" / "trainable.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"\x07garbage" + data[8:])
    refused = radargate(*args, "--resume")
    assert refused.returncode == 2
    assert str(runs / "damaged" / "checkpoint") in refused.stderr and "corrupt" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.xdist_group("faults-compared")
@pytest.mark.parametrize(("method", "file_name"), [("radar", "molora_model.safetensors"),
                                                   ("lora", "adapter_model.safetensors")])
def test_damaged_adapter_is_named_on_eval(runs, compared, method, file_name):
    copy_run(compared / "tiny" / method, runs, method)  # trained for 2 steps
    adapter = runs / method / "adapter" / file_name
    adapter.write_bytes(adapter.read_bytes()[:100])
    refused = radargate("eval", "--run", str(runs / method))
    assert refused.returncode == 2
    assert str(adapter) in refused.stderr and "Traceback" not in refused.stderr


def test_diverging_run_stops_with_a_clear_error_and_saves_nothing(config_file, runs):
    """``train.max_nonfinite_steps`` in a row (the share of skipped steps left unlimited, to see this guard)."""
    diverging = ("--set", "train.lr=1e30", "--set", "train.max_grad_norm=1e30", "--set", "train.max_skipped_share=1")
    diverged = radargate(*train_args(config_file, "diverged", *LONG, *diverging))
    assert diverged.returncode == 1
    assert "training diverged" in diverged.stderr and "train.lr=1e+30" in diverged.stderr
    assert "Traceback" not in diverged.stderr
    run_dir = runs / "diverged"
    rows = strict_rows(run_dir / "log.jsonl")
    assert [row.get("skipped", False) for row in rows][-3:] == [True, True, True]
    for row in rows[-3:]:  # each skipped step names what was not finite, as text (the numbers are null)
        assert row["nonfinite"] and all(not math.isfinite(float(value)) for value in row["nonfinite"].values())
    for checkpoint in run_dir.glob("checkpoint*"):
        assert all(torch.isfinite(t).all() for t in load_file(str(checkpoint / "trainable.safetensors")).values())
    assert not (run_dir / "adapter").exists()
    result = json.loads((run_dir / "result.json").read_text())
    assert set(result) == {"method", "failed"} and "training diverged" in result["failed"]
    again = radargate(*train_args(config_file, "diverged", *LONG, *diverging, "--resume"))
    assert again.returncode == 1 and "remove" in again.stderr  # the failure is kept, not retried silently


ENDS_DIVERGING = ("--config", str(QUICKSTART), "--set", "train.steps=4", "--set", "train.lr=10000.0",
                  "--set", "data.max_train_per_task=8", "--set", "data.max_validation_per_task=2",
                  "--set", "data.max_test_per_task=2", "--set", "eval.fit_per_task=0")
"""The real default model at a learning rate that makes its last steps non-finite (issue 24: steps 3 and 4
skipped, fewer than ``train.max_nonfinite_steps`` in a row, and the run used to end as a success)."""


def test_a_run_that_ends_while_diverging_fails_and_saves_no_adapter(runs):
    args = ["train", *ENDS_DIVERGING, "--set", f"output_dir={runs}", "--set", "name=ends_diverging"]
    diverged = radargate(*args)
    assert diverged.returncode == 1, diverged.stderr[-2000:]
    run_dir = runs / "ends_diverging"
    rows = strict_rows(run_dir / "log.jsonl")
    assert [row["step"] for row in rows if row.get("skipped")] == [len(rows)]  # 0 of 4 allowed: stopped at once
    message = diverged.stderr.strip().splitlines()[-1]
    assert message.startswith(f"radargate train: error: training diverged: the run skipped step {len(rows)} as "
                              "non-finite: 1 of its 4 steps (25%), more than allowed "
                              "(train.max_skipped_share=0.1: at most 0 of 4)")
    assert "Traceback" not in diverged.stderr
    assert not (run_dir / "adapter").exists()
    result = json.loads((run_dir / "result.json").read_text())
    assert set(result) == {"method", "failed"} and "train.max_skipped_share" in result["failed"]
    again = radargate(*args, "--resume")
    assert again.returncode == 1 and "train.max_skipped_share" in again.stderr and "remove" in again.stderr


def test_compare_marks_a_diverged_method_failed_and_goes_on(config_file, runs):
    done = radargate("compare", "--config", str(config_file), "--set", "train.lr=1e30",
                     "--set", "train.max_grad_norm=1e30", "--set", "compare.methods=[radar,base]")
    assert done.returncode == 1 and "radar failed: training diverged" in done.stderr
    results = json.loads((runs / "tiny" / "results.json").read_text(), parse_constant=refuse_constant)
    assert results["methods"]["radar"]["failed"] and results["methods"]["base"]["test"]["n"] == 10
    report = (runs / "tiny" / "report.md").read_text()
    assert "| radar (failed) |" in report and "## Failed runs" in report


def test_a_model_that_cannot_be_loaded_is_named(config_file):
    refused = radargate("eval", "--config", str(config_file), "--set", "model.name=no-such-org/no-such-model",
                        env={"HF_HUB_OFFLINE": "1"})
    assert refused.returncode == 2
    assert "model.name='no-such-org/no-such-model' could not be loaded" in refused.stderr
    assert "smollm2-135m-instruct" in refused.stderr and "Traceback" not in refused.stderr
