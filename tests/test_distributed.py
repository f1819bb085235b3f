"""Cutting a step's batch differently trains the same model: one process with batch 8, one with batch 4
and two accumulation steps, two processes (``accelerate launch``, gloo on the CPU) with batch 4 each.

The tiny model trains for a few steps through the CLI; per-step losses and the final adapters must agree
to float rounding. The runs use SGD (``train.optimizer=sgd``): AdamW's first steps divide each gradient
by its own size, so float noise in a near-zero gradient becomes a full-size update and no tolerance
separates "equal" from "different". Dropout is 0 (each process draws its own masks) and the precision
float32. Auxiliary losses are per micro-batch (``_Trainer._step``), so the runs that cut the batch into
other micro-batches train without them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from radargate.cli import main
from tests.conftest import write_tiny_config

ADAPTER = Path("adapter") / "molora_model.safetensors"
EXACT_ENOUGH = {"rel": 1e-5, "abs": 1e-7}
"""Float32 sums taken in another order (batch 8 against 2 x 4) differ in the last digits."""


def settings(method: str, *, batch_size: int, grad_accum: int = 1, aux: bool = False) -> list[str]:
    values = {
        "method": method, "train.steps": 4, "train.batch_size": batch_size, "train.grad_accum": grad_accum,
        "train.optimizer": "sgd", "train.lr": 0.5, "train.save_every": 2, "adapter.dropout": 0.0,
        "adapter.load_balance_weight": 0.01 if aux else 0.0, "eval.fit_per_task": 0,
    }
    return [argument for key, value in values.items() for argument in ("--set", f"{key}={value}")]


def train_in_process(config_file: Path, name: str, overrides: list[str]) -> Path:
    assert main(["train", "--config", str(config_file), "--set", f"name={name}", *overrides]) == 0
    return config_file.parent / "runs" / name


def log_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def assert_same_training(run: Path, reference: Path, *, aux: bool = False) -> None:
    """Same per-step losses and token counts, and the same trained adapter, to float rounding."""
    rows, expected = log_rows(run), log_rows(reference)
    assert [row["step"] for row in rows] == [row["step"] for row in expected] == [1, 2, 3, 4]
    for row, want in zip(rows, expected, strict=True):
        assert row["tokens"] == want["tokens"]
        assert row["loss"] == pytest.approx(want["loss"], **EXACT_ENOUGH)
        assert row["lm_loss"] == pytest.approx(want["lm_loss"], **EXACT_ENOUGH)
        assert row["grad_norm"] == pytest.approx(want["grad_norm"], **EXACT_ENOUGH)
        if aux:
            assert row["aux_losses"] == pytest.approx(want["aux_losses"], **EXACT_ENOUGH)
    trained, wanted = load_file(str(run / ADAPTER)), load_file(str(reference / ADAPTER))
    assert trained.keys() == wanted.keys()
    for name, tensor in wanted.items():
        scale = float(tensor.abs().max())
        assert scale > 0, f"{name} is all zeros"
        assert (trained[name] - tensor).abs().max() <= 1e-4 * scale, name  # a router's tiny gradients: 2e-5


@pytest.mark.parametrize("method", ["softmax", "radar"])
def test_grad_accum_trains_as_one_big_batch(tmp_path, tiny_model_dir, method):
    config_file = write_tiny_config(tmp_path, tiny_model_dir)
    whole = train_in_process(config_file, "whole", settings(method, batch_size=8))
    accumulated = train_in_process(config_file, "accumulated", settings(method, batch_size=4, grad_accum=2))
    assert_same_training(accumulated, whole)
