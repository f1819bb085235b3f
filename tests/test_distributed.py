"""Cutting a step's batch differently trains the same model: one process with batch 8, one with batch 4
and two accumulation steps, two processes (``accelerate launch``, gloo on the CPU) with batch 4 each.

The tiny model trains for a few steps through the CLI; per-step losses and the final adapters must agree
to float rounding. The runs use SGD (``train.optimizer=sgd``): AdamW's first steps divide each gradient
by its own size, so float noise in a near-zero gradient becomes a full-size update and no tolerance
separates "equal" from "different". Dropout is 0 (each process draws its own masks) and the precision
float32. Auxiliary losses are per micro-batch (``_Trainer._step``), so the runs that cut the batch into
other micro-batches train without them.

The tests that start two processes are ``serial`` (``tests/conftest.py``): each process takes a core.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from radargate.cli import main
from radargate.experiment.train import WORLD_SIZE_VARIABLES, processes, refuse_process_started_alone
from tests.conftest import write_tiny_config

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
CPU_2PROC = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
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


KILL_AFTER_FIRST_CHECKPOINT = r"""
import os, signal, sys
import radargate.experiment.train as train

real_save = train._Trainer.save_checkpoint

def save_checkpoint(self, state):
    real_save(self, state)
    self.accelerator.wait_for_everyone()  # the main process has written it
    os.kill(os.getpid(), signal.SIGKILL)

train._Trainer.save_checkpoint = save_checkpoint
from radargate.cli import main
from radargate.experiment.train import WORLD_SIZE_VARIABLES, processes, refuse_process_started_alone
sys.exit(main(sys.argv[1:]))
"""


def launch_two_processes(config_file: Path, name: str, overrides: list[str], *, script: Path | None = None,
                         launch_flags: tuple[str, ...] = (), check: bool = True) -> subprocess.CompletedProcess:
    """``radargate train`` in two CPU processes through ``accelerate launch`` (this checkout's code)."""
    return launch(config_file, name, overrides, script=script, launch_flags=("--config_file", str(CPU_2PROC),
                  *launch_flags), env={"ACCELERATE_USE_CPU": "1"}, check=check)


def launch(config_file: Path, name: str, overrides: list[str], *, launch_flags: tuple[str, ...],
           env: dict[str, str], script: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``radargate train`` (or ``script``) through ``accelerate launch``, with this checkout's code."""
    with socket.socket() as probe:  # a free port: other test runs may launch at the same time
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    program = [str(script)] if script else ["-m", "radargate.cli"]
    command = [str(ACCELERATE), "launch", "--main_process_port", str(port), *launch_flags,
               *program, "train", "--config", str(config_file), "--set", f"name={name}", *overrides]
    env = {**os.environ, **env, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


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


@pytest.mark.serial
@pytest.mark.parametrize("method", ["softmax", "radar"])
def test_two_processes_train_as_one(tmp_path, tiny_model_dir, method):
    config_file = write_tiny_config(tmp_path, tiny_model_dir)
    whole = train_in_process(config_file, "whole", settings(method, batch_size=8))
    launch_two_processes(config_file, "two", settings(method, batch_size=4))
    assert_same_training(tmp_path / "runs" / "two", whole)
    assert (tmp_path / "runs" / "two" / "result.json").is_file()


@pytest.mark.serial
def test_killed_two_process_run_resumes_exactly(tmp_path, tiny_model_dir):
    """Killed (SIGKILL, both processes) after the checkpoint of step 2 of 4, then resumed: the same losses,
    auxiliary losses included, and adapter as the uninterrupted run of the same micro-batches in one
    process (batch 4, two accumulation steps; the test above shows two processes equal to one)."""
    config_file = write_tiny_config(tmp_path, tiny_model_dir)
    overrides = settings("radar", batch_size=4, aux=True)
    killer = tmp_path / "kill_after_first_checkpoint.py"
    killer.write_text(KILL_AFTER_FIRST_CHECKPOINT)
    killed = launch_two_processes(config_file, "split", overrides, script=killer, check=False)
    assert killed.returncode != 0, killed.stderr[-3000:]
    run_dir = tmp_path / "runs" / "split"
    assert [row["step"] for row in log_rows(run_dir)] == [1, 2] and not (run_dir / "result.json").exists()
    launch_two_processes(config_file, "split", [*overrides, "--resume"])
    whole = train_in_process(config_file, "whole", settings("radar", batch_size=4, grad_accum=2, aux=True))
    assert_same_training(run_dir, whole, aux=True)


def test_processes_that_accelerate_left_apart_are_refused(monkeypatch):
    """Launched on a machine without a GPU and without ACCELERATE_USE_CPU=1, accelerate makes each process
    a run of its own (process 0 of 1): they would all write the same folder."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"started 2 processes, but accelerate found no GPU and set up 1 .*"
                                         r"ACCELERATE_USE_CPU=1"):
        processes()


STARTED_ALONE = "accelerate launch was asked for more than one process but started this one alone (world size 1"


def test_cpu_launch_that_starts_one_of_two_processes_is_refused_before_loading(tmp_path, tiny_model_dir):
    """accelerate (1.16) starts one process for ``--cpu --num_processes 2`` (it needs mpirun for more); that
    process would train alone at the per-process batch. It is refused before anything is loaded."""
    config_file = write_tiny_config(tmp_path, tiny_model_dir)
    refused = launch(config_file, "alone", settings("radar", batch_size=4), launch_flags=("--cpu", "--num_processes",
                     "2"), env={}, check=False)
    assert refused.returncode != 0
    assert f"radargate train: error: {STARTED_ALONE}" in refused.stderr
    assert "ACCELERATE_USE_CPU=1 accelerate launch --config_file configs/accelerate/cpu_2proc.yaml" in refused.stderr
    assert not (tmp_path / "runs").exists()


def launched_alone(monkeypatch) -> None:
    """The environment that ``accelerate launch --cpu --num_processes 2`` gives the one process it starts."""
    for name in WORLD_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in {"ACCELERATE_USE_CPU": "True", "ACCELERATE_DYNAMO_BACKEND": "NO", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("verb", ["train", "compare", "study"])
def test_every_verb_that_trains_refuses_a_process_started_alone(monkeypatch, capsys, verb):
    launched_alone(monkeypatch)
    assert main([verb, "--config", "no-such-config.yaml"]) == 2  # refused before the config is read
    assert f"radargate {verb}: error: {STARTED_ALONE}" in capsys.readouterr().err


@pytest.mark.parametrize(("variable", "value"), [
    ("MASTER_ADDR", None),            # accelerate launch of one process: no MASTER_ADDR
    ("WORLD_SIZE", "1"),              # torchrun of one process (FSDP on one GPU)
    ("OMPI_COMM_WORLD_SIZE", "2"),    # mpirun (--mpirun_hostfile) started the processes
    ("ACCELERATE_DYNAMO_BACKEND", None),  # no accelerate launch: MASTER_ADDR is the shell's own
])
def test_launches_that_start_every_process_asked_for_are_not_refused(monkeypatch, variable, value):
    launched_alone(monkeypatch)
    if value is None:
        monkeypatch.delenv(variable)
    else:
        monkeypatch.setenv(variable, value)
    refuse_process_started_alone()


@pytest.mark.serial
def test_fsdp_on_cpus_is_refused(tmp_path, tiny_model_dir):
    """accelerate (1.15) shards with FSDP only on GPUs; on CPUs it would wrap the model in DDP instead."""
    config_file = write_tiny_config(tmp_path, tiny_model_dir)
    fsdp = ("--use_fsdp", "--fsdp_version", "2")
    refused = launch_two_processes(config_file, "fsdp", settings("radar", batch_size=4), launch_flags=fsdp,
                                   check=False)
    assert refused.returncode != 0
    assert "FSDP was asked for on CPUs, where accelerate uses DDP instead" in refused.stderr
    assert not (tmp_path / "runs" / "fsdp").exists()


FSDP2_WORKER = r"""
import json, sys
from pathlib import Path
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from radargate import MoLoRAConfig, get_molora_model

model_dir, out_file = sys.argv[1], Path(sys.argv[2])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()

def build():
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = MoLoRAConfig(num_experts=4, r=2, alpha=4, gate="radar", target_modules=["q_proj", "v_proj"])
    model = get_molora_model(base, config)
    with torch.no_grad():  # non-zero B and angles, so every path of the gate is exercised
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(0, 0.1)
    return model

reference, sharded = build(), build()
for module in list(sharded.modules()):
    if isinstance(module, LlamaDecoderLayer):  # the usual wrapping: one all-gather per decoder layer
        fully_shard(module)
fully_shard(sharded)
optimizers = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5) for m in (reference, sharded)]
ids = torch.randint(0, 50, (2 * world, 12), generator=torch.Generator().manual_seed(1))
local = ids[2 * rank : 2 * rank + 2]
found = {"eval": [], "loss": []}
for step in range(10):
    for model in (reference, sharded):
        model.eval()
    with torch.no_grad():  # evaluation between steps: the weights just changed under FSDP's all-gather
        found["eval"].append(float((reference(input_ids=ids).logits - sharded(input_ids=ids).logits).abs().max()))
    for model in (reference, sharded):
        model.train()
    loss = reference(input_ids=ids, labels=ids).loss
    loss.backward()
    local_loss = sharded(input_ids=local, labels=local).loss
    local_loss.backward()  # FSDP averages the gradients over processes: each holds half of equal-length rows
    mean_loss = local_loss.detach().clone()
    dist.all_reduce(mean_loss)
    found["loss"].append(abs(float(mean_loss) / world - float(loss)))
    for optimizer in optimizers:
        optimizer.step()
        optimizer.zero_grad()
trained = dict(sharded.named_parameters())
found["params"] = max(float((p - trained[name].full_tensor()).abs().max())
                      for name, p in reference.named_parameters() if p.requires_grad)
saved = out_file.parent / "sharded_adapter"
sharded.save_pretrained(saved)  # every process gathers, process 0 writes
dist.barrier()
reloaded = build()
for module in list(reloaded.modules()):
    if isinstance(module, LlamaDecoderLayer):
        fully_shard(module)
fully_shard(reloaded)
reloaded.load_pretrained_weights(saved)  # each process takes its shard of the file
reloaded.eval()
reference.eval()
with torch.no_grad():
    found["reloaded"] = float((reference(input_ids=ids).logits - reloaded(input_ids=ids).logits).abs().max())
if rank == 0:
    written = reference.adapter_state_dict()
    from radargate.checkpoint import load_tensors
    tensors, _ = load_tensors(saved / "molora_model.safetensors")
    found["saved"] = max(float((tensors[key] - value).abs().max()) for key, value in written.items())
    found["saved_keys"] = sorted(tensors) == sorted(written)
    json.dump(found, open(out_file, "w"))
dist.destroy_process_group()
"""


@pytest.mark.serial
def test_layers_sharded_by_fsdp2_train_evaluate_save_and_load_as_one_process(tmp_path, tiny_model_dir):
    """torch's FSDP2 (``fully_shard``) runs on CPUs with gloo, though accelerate offers it on GPUs only: every
    mixture layer sharded over 2 processes trains like one process on the whole batch, evaluating between
    steps sees the new weights (a cache keyed on storage and version counter did not: FSDP2 refills its
    gathered parameters without bumping the version), and the adapter saves and loads whole."""
    script, out_file = tmp_path / "fsdp2_worker.py", tmp_path / "found.json"
    script.write_text(FSDP2_WORKER)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               str(script), str(tiny_model_dir), str(out_file)]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(out_file.read_text())
    assert len(found["eval"]) == len(found["loss"]) == 10
    assert max(found["eval"]) < 1e-5 and max(found["loss"]) < 1e-5 and found["params"] < 1e-5, found
    # save_pretrained gathers the shards into one file equal to the unsharded model's; loading it back
    # into a sharded model gives the same logits
    assert found["saved_keys"] and found["saved"] < 1e-5 and found["reloaded"] < 1e-5, found


FSDP_CONFIG = ROOT / "configs" / "accelerate" / "fsdp.yaml"
on_gpus = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="accelerate shards with FSDP only on GPUs (on CPUs it refuses, test_fsdp_on_cpus_is_refused); "
    "run on a GPU machine (docs/distributed.md)",
)

RECORD_SHARDING = r"""
import json, sys
import radargate.experiment.train as train

real_save = train._Trainer.save_checkpoint

def save_checkpoint(self, state):  # records, at each checkpoint, that FSDP really holds the weights as shards
    kinds = sorted({type(p).__name__ for p in train.trainable_parameters(self.unwrapped).values()})
    if self.accelerator.is_main_process:
        with open(self.run_dir / "sharding.jsonl", "a") as stream:
            stream.write(json.dumps({"distributed": self.accelerator.distributed_type.value, "kinds": kinds}) + "\n")
    real_save(self, state)

train._Trainer.save_checkpoint = save_checkpoint
from radargate.cli import main
sys.exit(main(sys.argv[1:]))
"""


def launch_fsdp(tmp_path: Path, config_file: Path, name: str, overrides: list[str], *, kill: bool = False
                ) -> subprocess.CompletedProcess:
    """``radargate train`` under accelerate's FSDP2 (``configs/accelerate/fsdp.yaml``), one process per GPU,
    float32; with ``kill``, SIGKILLed after its first checkpoint."""
    script = tmp_path / ("kill_after_first_checkpoint.py" if kill else "record_sharding.py")
    script.write_text(KILL_AFTER_FIRST_CHECKPOINT if kill else RECORD_SHARDING)
    flags = ("--config_file", str(FSDP_CONFIG), "--num_processes", str(torch.cuda.device_count()),
             "--mixed_precision", "no")
    return launch(config_file, name, overrides, script=script, launch_flags=flags, env={}, check=not kill)


@on_gpus
@pytest.mark.serial
@pytest.mark.parametrize("method", ["softmax", "radar"])
def test_fsdp_through_accelerate_trains_as_one_process(tmp_path, tiny_model_dir, method):
    """Every process (one per GPU) holds shards of the adapters, yet the run trains, checkpoints and saves the
    same model as one unsharded process on the whole batch."""
    config_file = write_tiny_config(tmp_path, tiny_model_dir)
    whole = train_in_process(config_file, "whole", settings(method, batch_size=8))
    launch_fsdp(tmp_path, config_file, "fsdp", settings(method, batch_size=8 // torch.cuda.device_count()))
    run_dir = tmp_path / "runs" / "fsdp"
    records = [json.loads(line) for line in (run_dir / "sharding.jsonl").read_text().splitlines()]
    assert records and all(row == {"distributed": "FSDP", "kinds": ["DTensor"]} for row in records), records
    assert_same_training(run_dir, whole)
    assert (run_dir / "result.json").is_file()


@on_gpus
@pytest.mark.serial
def test_killed_fsdp_run_resumes_exactly(tmp_path, tiny_model_dir):
    """Killed after the checkpoint of step 2 of 4, then resumed under FSDP: the same losses and adapter as the
    uninterrupted unsharded run (the checkpoint holds whole weights and optimizer state, cut into shards on
    loading)."""
    config_file = write_tiny_config(tmp_path, tiny_model_dir)
    gpus = torch.cuda.device_count()
    overrides = settings("radar", batch_size=8 // gpus, aux=True)
    killed = launch_fsdp(tmp_path, config_file, "split", overrides, kill=True)
    assert killed.returncode != 0, killed.stderr[-3000:]
    run_dir = tmp_path / "runs" / "split"
    assert [row["step"] for row in log_rows(run_dir)] == [1, 2] and not (run_dir / "result.json").exists()
    launch_fsdp(tmp_path, config_file, "split", [*overrides, "--resume"])
    # the same micro-batches in one process: the auxiliary losses are per micro-batch
    whole = train_in_process(config_file, "whole", settings("radar", batch_size=8 // gpus, grad_accum=gpus, aux=True))
    assert_same_training(run_dir, whole, aux=True)


def test_resume_with_another_number_of_processes_is_refused(tmp_path, tiny_model_dir, capsys):
    config_file = write_tiny_config(tmp_path, tiny_model_dir)
    overrides = [*settings("softmax", batch_size=4), "--set", "train.steps=2"]
    run_dir = train_in_process(config_file, "run", overrides)
    (run_dir / "result.json").unlink()  # unfinished, as if killed after its last checkpoint
    state_file = run_dir / "checkpoint" / "trainer_state.pt"
    saved = torch.load(state_file, weights_only=True)
    assert saved["num_processes"] == 1
    torch.save({**saved, "num_processes": 2}, state_file)
    capsys.readouterr()
    assert main(["train", "--config", str(config_file), "--set", "name=run", *overrides, "--resume"]) == 2
    assert "was written by 2 processes, this run has 1" in capsys.readouterr().err
