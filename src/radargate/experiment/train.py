"""The training loop: fine-tuning a mixture of LoRA experts (or PEFT's LoRA) on answers, choices or chats.

The model learns to produce each training example's correct answer after its prompt (loss on the
answer tokens only). AdamW (or SGD) with linear warm-up and cosine decay, gradient accumulation and
clipping, mixed precision and multi-GPU through accelerate (``accelerate launch``). Batches are a
pure function of the step (``BatchSchedule``), and checkpoints hold the trainable weights, the
optimizer, the schedule, the random states and the log, so a resumed run continues exactly.

The loop writes into the run folder (``radargate.experiment.run`` prepares it): ``log.jsonl`` (one
row per step), ``checkpoint/`` (replaced atomically), ``adapter/`` (the final adapter, loadable by
``MoLoRAModel.from_pretrained`` or PEFT).

A step whose loss or gradient norm is not finite is skipped (no optimizer update) and logged with
``"skipped": true`` and the offending values as strings under ``"nonfinite"`` (the numbers
themselves are ``null``: the log is strict JSON). ``train.max_nonfinite_steps`` such steps in a
row stop the run with ``TrainingDiverged``, and so do more than ``train.max_skipped_share`` of the
run's steps skipped (as soon as they are) or a skipped last step (``skipped_steps_verdict``): a run that
ends while diverging is never reported as a success. Weights that are not finite are never saved.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, parse_flag_from_env
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from radargate.errors import TrainingDiverged
from radargate.experiment.config import ExperimentConfig
from radargate.experiment.data.batching import EncodedSequence, answer_logprobs, collate
from radargate.experiment.data.examples import Example, encode_example
from radargate.experiment.data.sources import sampling_weights
from radargate.experiment.evaluate import autocast_dtype, evaluate_examples, mixed_precision
from radargate.experiment.methods import save_adapter, trainable_parameters
from radargate.experiment.tracking import start_trackers, step_metrics
from radargate.files import atomic_write_bytes, atomic_write_directory, atomic_write_text, latest_directory, strict_json
from radargate.model import MoLoRAModel
from radargate.sharding import copy_whole_into, whole

# -- data -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSchedule:
    """Which training examples form each micro-batch, as a function of the step alone.

    The examples are read in epochs, each a fresh permutation seeded by ``(seed, epoch)``; so
    batches never depend on what ran before, which makes resuming exact. With ``weights`` (a mixture
    whose sources weigh differently), an epoch is instead ``num_examples`` draws with replacement,
    each example in proportion to its weight, seeded the same way.
    """

    num_examples: int
    batch_size: int
    grad_accum: int
    seed: int
    num_processes: int = 1
    weights: tuple[float, ...] | None = None

    def micro_batch(self, step: int, micro: int, process: int = 0) -> list[int]:
        per_step = self.batch_size * self.grad_accum * self.num_processes
        start = step * per_step + (micro * self.num_processes + process) * self.batch_size
        return [self._example_at(position) for position in range(start, start + self.batch_size)]

    def _example_at(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_examples)
        if self.weights is not None:
            return _weighted_draws(self.weights, self.seed, epoch)[offset]
        return _permutation(self.num_examples, self.seed, epoch)[offset]


@functools.lru_cache(maxsize=4)
def _permutation(size: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(size, generator=generator).tolist()


@functools.lru_cache(maxsize=4)
def _weighted_draws(weights: tuple[float, ...], seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    probabilities = torch.tensor(weights, dtype=torch.float64)
    return torch.multinomial(probabilities, len(weights), replacement=True, generator=generator).tolist()


def encode_training_examples(tokenizer, examples: list[Example], max_length: int) -> list[EncodedSequence]:
    """Each example as trained on: a prompt with its correct answer, a completion, a conversation."""
    return [encode_example(tokenizer, example, max_length) for example in examples]


# -- training -------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Everything besides the weights that a resumed run needs."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    train_time_s: float = 0.0
    tokens: int = 0
    skipped_steps: int = 0
    """Steps skipped because their loss or gradient norm was not finite."""
    nonfinite_in_a_row: int = 0


def fit(
    config: ExperimentConfig,
    model: torch.nn.Module,
    tokenizer,
    splits: dict[str, list[Example]],
    run_dir: Path,
    *,
    resume: bool,
    show_progress: bool,
) -> tuple[torch.nn.Module, TrainState]:
    """Train ``model`` in ``run_dir`` (from its last checkpoint with ``resume``); return the trained
    model, unwrapped from accelerate, and the state."""
    trainer = _Trainer(config, model, tokenizer, splits, run_dir)
    state = trainer.restore() if resume else TrainState()
    trainer.run(state, show_progress=show_progress)
    return trainer.unwrapped, state


CPU_LAUNCH = ("OMP_NUM_THREADS=1 ACCELERATE_USE_CPU=1 accelerate launch "
              "--config_file configs/accelerate/cpu_2proc.yaml [--num_processes N] -m radargate.cli train ...")
"""The launch of several CPU processes that works (docs/distributed.md)."""
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
"""Where torchrun and mpirun tell a process how many were started (those that accelerate reads)."""


def refuse_process_started_alone() -> None:
    """Refuse a process that ``accelerate launch`` started alone although several were asked for.

    With ``--cpu`` or fewer than two GPUs (``--cpu --num_processes 2``, or ``--num_processes 2`` on a CPU
    machine) and no ``--mpirun_hostfile``, accelerate (1.16) starts one plain process, silently; it would
    train alone at the per-process batch. The count asked for reaches that process nowhere, but
    the launcher sets ``MASTER_ADDR`` only when more than one process (or machine) was asked for, while
    torchrun and mpirun, which do start several, also say how many (``WORLD_SIZE_VARIABLES``). So a
    launched process with ``MASTER_ADDR`` and no world size was meant to have company. Reading the
    environment alone, this runs before anything is loaded.
    """
    launched_by_accelerate = "ACCELERATE_DYNAMO_BACKEND" in os.environ  # set by its launcher of plain processes
    if not launched_by_accelerate or "MASTER_ADDR" not in os.environ:
        return
    if any(name in os.environ for name in WORLD_SIZE_VARIABLES):
        return
    raise ValueError(
        "accelerate launch was asked for more than one process but started this one alone (world size 1; "
        f"accelerate passes on no process count, only MASTER_ADDR={os.environ['MASTER_ADDR']}, which it sets "
        "for several): with --cpu or fewer than two GPUs and without --mpirun_hostfile, `accelerate launch "
        "--num_processes N` starts one process, which would train alone at the per-process batch. On CPUs "
        f"launch with: {CPU_LAUNCH} (docs/distributed.md). For one process, run radargate without accelerate "
        "launch (or unset MASTER_ADDR if your shell sets it)"
    )


def processes() -> PartialState:
    """This run's processes: one, or those started by ``accelerate launch``. Set up as ``Accelerator()``
    sets them up, honouring ``ACCELERATE_USE_CPU`` (gloo between CPU processes), so that asking
    before the trainer exists changes nothing.

    Three launches that accelerate (1.15, 1.16) would run silently wrong are refused: several processes asked
    for and one started (``refuse_process_started_alone``), processes started without a GPU and without
    ``ACCELERATE_USE_CPU=1`` (each would train alone, as process 0 of 1, in the same folder), and FSDP on
    CPUs (accelerate wraps the model in DDP instead).
    """
    refuse_process_started_alone()
    group = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != group.num_processes:
        raise ValueError(
            f"accelerate launch started {launched} processes, but accelerate found no GPU and set up "
            f"{group.num_processes} (each would train alone in the same run folder); on CPUs launch with "
            "ACCELERATE_USE_CPU=1 (docs/distributed.md)"
        )
    if parse_flag_from_env("ACCELERATE_USE_FSDP") and group.distributed_type == DistributedType.MULTI_CPU:
        raise ValueError(
            "FSDP was asked for on CPUs, where accelerate uses DDP instead (it shards with FSDP only on GPUs "
            "and similar devices); launch without --use_fsdp, or on GPUs (docs/distributed.md)"
        )
    return group


def skipped_steps_verdict(skipped: list[int], *, steps: int, max_share: float) -> str | None:
    """Why a run of ``steps`` steps whose steps ``skipped`` (so far, ascending) were skipped as non-finite
    cannot end as a success, or None while it still can.

    A run that ends on a skipped step ends on the weights of a run that was diverging, and one that skipped
    more than ``max_share`` of its steps (``train.max_skipped_share``) trained on too few of its batches
    with an unstable loss: neither is a result. Skipped steps never come back, so the share is judged as
    soon as it is exceeded, and the run stops then rather than at its end.
    """
    allowed = math.floor(max_share * steps + 1e-9)  # 0.29 * 100 is 28.999...
    counted = (f"the run skipped step{'s' if len(skipped) > 1 else ''} {_step_list(skipped)} as non-finite: "
               f"{len(skipped)} of its {steps} steps ({len(skipped) / steps:.0%})")
    limit = f"train.max_skipped_share={max_share}: at most {allowed} of {steps}"
    if len(skipped) > allowed:
        return f"{counted}, more than allowed ({limit})"
    if skipped and skipped[-1] == steps:
        return f"its last step was skipped as non-finite, so it would end while diverging ({counted}; {limit})"
    return None


def _step_list(steps: list[int], shown: int = 10) -> str:
    """``3, 4, 7``; a long list cut to its first ``shown`` and how many more."""
    listed = ", ".join(map(str, steps[:shown]))
    return listed if len(steps) <= shown else f"{listed} and {len(steps) - shown} more"


SGD_MOMENTUM = 0.9
WHOLE = StateDictOptions(full_state_dict=True)
WHOLE_ON_CPU = StateDictOptions(full_state_dict=True, cpu_offload=True)
"""Optimizer state in checkpoints: keyed by parameter name and whole, however FSDP shards it (``cpu_offload``
leaves it on the main process alone, the one that writes)."""


def make_optimizer(name: str, parameters: list[torch.nn.Parameter], *, lr: float, weight_decay: float
                   ) -> torch.optim.Optimizer:
    """``train.optimizer``: AdamW, or SGD with momentum ``SGD_MOMENTUM`` (an update linear in the
    gradients, so runs that cut the same batch differently stay equal to float rounding)."""
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=SGD_MOMENTUM, weight_decay=weight_decay)
    raise ValueError(f"train.optimizer={name!r} is unknown; choose one of adamw, sgd")


class _Trainer:
    def __init__(self, config: ExperimentConfig, model, tokenizer, splits: dict[str, list[Example]], run_dir: Path):
        settings = config.train
        processes()  # refuses launches that would train silently wrong
        self.config, self.tokenizer, self.run_dir = config, tokenizer, run_dir
        self.validation_examples = splits["validation"]
        self.train_pairs = encode_training_examples(tokenizer, splits["train"], config.data.max_length)
        # the answer tokens of each example that the loss scores (a sequence's first token is never predicted)
        self.answer_counts = [sum(pair.answer_mask[1:]) for pair in self.train_pairs]
        if not self.train_pairs:
            raise ValueError(f"no training examples for tasks {config.data.task_names}")
        # step_scheduler_with_optimizer=False: the schedule moves once per step. Accelerate's default steps
        # it once per process, for data loaders that it shards; here the schedule shards the batch.
        self.accelerator = Accelerator(
            mixed_precision=mixed_precision(settings.precision), step_scheduler_with_optimizer=False,
            log_with=settings.report_to or None, project_dir=run_dir / "tracking",
        )
        self.tracking = bool(settings.report_to)
        if settings.compile and isinstance(model, MoLoRAModel):
            model.compile_layers()
        parameters = list(trainable_parameters(model).values())
        optimizer = make_optimizer(settings.optimizer, parameters, lr=settings.lr, weight_decay=settings.weight_decay)
        scheduler = get_cosine_schedule_with_warmup(optimizer, settings.warmup_steps, settings.steps)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.unwrapped = self.accelerator.unwrap_model(self.model)
        self.schedule = BatchSchedule(
            len(self.train_pairs), settings.batch_size, settings.grad_accum, settings.seed,
            self.accelerator.num_processes, sampling_weights(config.data, splits["train"]),
        )
        if self.tracking:
            start_trackers(self.accelerator, config)

    def run(self, state: TrainState, *, show_progress: bool) -> None:
        settings = self.config.train
        progress = tqdm(
            total=settings.steps, initial=state.step, desc=self.config.method, dynamic_ncols=True,
            disable=not show_progress or not self.accelerator.is_main_process,
        )
        log = self.run_dir / "log.jsonl"
        with progress:
            while state.step < settings.steps:
                started = time.perf_counter()
                with self._routing() as routing:
                    row = self._step(state.step)
                state.train_time_s += time.perf_counter() - started
                state.step += 1
                state.tokens += row["tokens"]
                state.history.append(row)
                if self.tracking:
                    tokens_per_s = state.tokens / state.train_time_s
                    self.accelerator.log(step_metrics(row, tokens_per_s, routing), step=state.step)
                if self.accelerator.is_main_process:
                    with log.open("a") as stream:
                        stream.write(strict_json(row) + "\n")
                self._count_nonfinite(state, row)
                progress.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{state.tokens / state.train_time_s:.0f}")
                progress.update(1)
                if settings.eval_every and state.step % settings.eval_every == 0 and state.step < settings.steps:
                    state.validation.append(self.validate(state.step))
                if state.step % settings.save_every == 0 or state.step == settings.steps:
                    self.save_checkpoint(state)
        if not state.validation or state.validation[-1]["step"] != state.step:
            state.validation.append(self.validate(state.step))
            self.save_checkpoint(state)
        self.require_finite_weights()
        save_adapter(self.unwrapped, self.run_dir / "adapter")  # every process: FSDP gathers the shards first
        if self.tracking:
            self.accelerator.end_training()

    def _routing(self) -> contextlib.AbstractContextManager[dict]:
        """Routing statistics of the step for the trackers (nothing is gathered without them)."""
        if self.tracking and isinstance(self.unwrapped, MoLoRAModel):
            return self.unwrapped.record_routing()
        return contextlib.nullcontext({})

    def _step(self, step: int) -> dict[str, Any]:
        """One optimizer step over the step's global batch: every micro-batch of every process.

        The LM loss is the mean negative log-likelihood over the step's answer tokens, all processes
        and micro-batches together: each micro-batch contributes ``sum(NLL) / N_step`` (``N_step`` from
        the schedule, ``_answer_tokens``), times the number of processes because DDP averages
        gradients over them. So the gradient is the same however the step's batch is cut. The
        auxiliary losses are the mean over the step's micro-batches (of all processes) of each
        micro-batch's auxiliary losses. Gradients are synchronised once, on the last micro-batch.
        The logged values (``loss``, ``lm_loss``, ``aux_losses``, ``tokens``) are the step's global ones.
        """
        settings = self.config.train
        accelerator = self.accelerator
        self.model.train()
        answer_tokens = self._answer_tokens(step)
        lm_scale = accelerator.num_processes / max(answer_tokens, 1)
        nll_sum = weighted_aux_sum = 0.0
        tokens = 0
        aux_sums: dict[str, float] = {}
        for micro in range(settings.grad_accum):
            indices = self.schedule.micro_batch(step, micro, accelerator.process_index)
            batch = collate([self.train_pairs[i] for i in indices], self.tokenizer.pad_token_id)
            last = micro == settings.grad_accum - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(self.model):
                nll, aux, parts = self._losses(batch.to(accelerator.device))
                accelerator.backward(nll * lm_scale + aux / settings.grad_accum)
            nll_sum += float(nll.detach())
            weighted_aux_sum += float(aux.detach())
            tokens += int(batch.attention_mask.sum())
            for name, value in parts.items():
                aux_sums[name] = aux_sums.get(name, 0.0) + float(value)
        totals = self._global_totals(answer_tokens, nll_sum, weighted_aux_sum, tokens, aux_sums)
        grad_norm = float(whole(accelerator.clip_grad_norm_(self.model.parameters(), settings.max_grad_norm)))
        nonfinite = {name: str(value) for name, value in (("loss", totals["loss"]), ("grad_norm", grad_norm))
                     if not math.isfinite(value)}
        if not nonfinite or self._scaler_handles(nonfinite):
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        row = {"step": step + 1, **totals, "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm}
        return {**row, "skipped": True, "nonfinite": nonfinite} if nonfinite else row

    def _answer_tokens(self, step: int) -> int:
        """The answer tokens that the step's loss averages over, on all processes and micro-batches.

        The schedule makes every micro-batch a function of the step, so each process counts them all
        itself: no communication, and the count is known before the first backward pass.
        """
        schedule = self.schedule
        return sum(
            self.answer_counts[i]
            for micro in range(schedule.grad_accum)
            for process in range(schedule.num_processes)
            for i in schedule.micro_batch(step, micro, process)
        )

    def _global_totals(
        self, answer_tokens: int, nll_sum: float, weighted_aux_sum: float, tokens: int, aux_sums: dict[str, float]
    ) -> dict[str, Any]:
        """The step's loss, LM loss, auxiliary losses and tokens over all processes: one all-reduce (a
        sum), after which every process holds the same values, so all agree on skipping a step."""
        names = sorted(aux_sums)
        local = [nll_sum, weighted_aux_sum, float(tokens), *(aux_sums[name] for name in names)]
        summed = local
        if self.accelerator.num_processes > 1:  # float64: NCCL and gloo have it (MPS, single-process, has not)
            device = self.accelerator.device
            summed = self.accelerator.reduce(torch.tensor(local, dtype=torch.float64, device=device), "sum").tolist()
        micro_batches = self.schedule.grad_accum * self.schedule.num_processes
        lm_loss = summed[0] / max(answer_tokens, 1)
        totals = {"loss": lm_loss + summed[1] / micro_batches, "lm_loss": lm_loss, "tokens": round(summed[2])}
        if names:
            totals["aux_losses"] = {name: value / micro_batches for name, value in zip(names, summed[3:], strict=True)}
        return totals

    def _scaler_handles(self, nonfinite: dict[str, str]) -> bool:
        """fp16: a finite loss with overflowed gradients is the grad scaler's business; its step skips
        the update and lowers the scale, which it must do for training to go on."""
        return self.accelerator.scaler is not None and "loss" not in nonfinite

    def _count_nonfinite(self, state: TrainState, row: dict[str, Any]) -> None:
        """Count skipped steps; stop after ``train.max_nonfinite_steps`` in a row, or when the run can no
        longer end as a success (``skipped_steps_verdict``); fp16 overflows aside."""
        if not row.get("skipped"):
            state.nonfinite_in_a_row = 0
            return
        state.skipped_steps += 1
        if self._scaler_handles(row["nonfinite"]):
            return
        state.nonfinite_in_a_row += 1
        values = ", ".join(f"{name}={value}" for name, value in row["nonfinite"].items())
        limit = self.config.train.max_nonfinite_steps
        if state.nonfinite_in_a_row >= limit:
            raise self._diverged(
                f"{limit} steps in a row had a non-finite loss or gradient norm, the last at step {row['step']} "
                f"({values}); stopped without saving (train.max_nonfinite_steps={limit})"
            )
        skipped = [done["step"] for done in state.history
                   if done.get("skipped") and not self._scaler_handles(done["nonfinite"])]
        verdict = skipped_steps_verdict(skipped, steps=self.config.train.steps,
                                        max_share=self.config.train.max_skipped_share)
        if verdict:
            raise self._diverged(f"{verdict}; step {row['step']} had {values}; stopped without saving")

    def _diverged(self, what: str) -> TrainingDiverged:
        return TrainingDiverged(
            f"training diverged: {what}. {self._likely_causes()} "
            f"The last finite checkpoint, if any, is in {self.run_dir / 'checkpoint'}."
        )

    def _likely_causes(self) -> str:
        settings = self.config.train
        causes = f"Likely causes: a learning rate too high (train.lr={settings.lr}; try 10x lower)"
        if mixed_precision(settings.precision) != "no":
            causes += f", or half precision overflowing (train.precision={settings.precision}; try no)"
        return causes + "."

    def _losses(self, batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The micro-batch's summed negative log-likelihood of its answer tokens (``_step`` divides by the
        step's count), the weighted sum of its auxiliary losses, and each auxiliary loss unweighted
        (detached, for the log). The auxiliary losses average over every token position of the
        micro-batch, padding included (``radargate.losses``)."""
        kwargs = {"with_aux": True} if isinstance(self.unwrapped, MoLoRAModel) else {}
        logprobs, output = answer_logprobs(self.model, batch, **kwargs)
        nll_sum = -logprobs.sum()
        aux = output.get("aux_loss") if isinstance(output, dict) else None
        if aux is None:
            return nll_sum, torch.zeros((), device=nll_sum.device), {}
        return nll_sum, aux, output["aux_losses"]

    def validate(self, step: int) -> dict[str, Any]:
        result = evaluate_examples(
            self.unwrapped, self.tokenizer, self.validation_examples,
            batch_size=self.config.eval.batch_size, max_length=self.config.data.max_length,
            autocast_dtype=autocast_dtype(self.config.train.precision),
        )
        return {"step": step, "macro_acc": result["macro_acc"], "macro_acc_norm": result["macro_acc_norm"],
                "macro_answer_nll": result["macro_answer_nll"]}

    # -- checkpoints: a folder written beside the old one, then swapped in (radargate.files) --------

    def _whole_weights(self) -> dict[str, torch.Tensor]:
        """The trainable weights, gathered whole where FSDP2 shards them (a collective: every process calls it)."""
        return {name: whole(p).detach() for name, p in trainable_parameters(self.unwrapped).items()}

    def require_finite_weights(self, weights: dict[str, torch.Tensor] | None = None) -> None:
        """A model with non-finite weights is never saved, evaluated or reported (``weights``: already gathered)."""
        weights = self._whole_weights() if weights is None else weights
        bad = [name for name, tensor in weights.items() if not torch.isfinite(tensor).all()]
        if bad:
            raise TrainingDiverged(
                f"training diverged: {len(bad)} trainable tensors hold non-finite values (first: {bad[0]}); "
                f"nothing was saved. {self._likely_causes()}"
            )

    def save_checkpoint(self, state: TrainState) -> None:
        """Every process gathers the weights and optimizer state whole (FSDP2 holds them as shards, one per
        process); the main process writes them, so a checkpoint does not depend on how they were sharded."""
        weights = self._whole_weights()  # gathered once, for the check and the file
        self.require_finite_weights(weights)
        weights = {name: tensor.cpu().contiguous() for name, tensor in weights.items()}
        optimizer = get_optimizer_state_dict(self.model, self.optimizer.optimizer, options=WHOLE_ON_CPU)
        if not self.accelerator.is_main_process:
            return
        atomic_write_directory(
            self.run_dir / "checkpoint", lambda folder: self._write_checkpoint_files(folder, state, weights, optimizer)
        )

    def _write_checkpoint_files(self, directory: Path, state: TrainState, weights: dict[str, torch.Tensor],
                                optimizer: dict[str, Any]) -> None:
        """Weights and trainer state, serialised in memory and written by Python (so a failed write is an
        ``OSError`` naming the file) with fsync, as every file the project writes."""
        atomic_write_bytes(directory / "trainable.safetensors", save_safetensors(weights))
        trainer_state = io.BytesIO()
        torch.save(
            {
                "state": state.__dict__,
                "optimizer": optimizer,
                "scheduler": self.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python_rng": random.getstate(),
                "num_processes": self.accelerator.num_processes,
            },
            trainer_state,
        )
        atomic_write_bytes(directory / "trainer_state.pt", trainer_state.getvalue())

    def restore(self) -> TrainState:
        """Load the last checkpoint (or the previous one, if a crash hit between the two renames), and
        cut the log back to it; with no checkpoint yet, the run starts over with an empty log."""
        directory = latest_directory(self.run_dir / "checkpoint")
        if directory is None:
            if self.accelerator.is_main_process:
                atomic_write_text(self.run_dir / "log.jsonl", "")
            return TrainState()
        try:
            weights = load_file(str(directory / "trainable.safetensors"))
            saved = torch.load(directory / "trainer_state.pt", weights_only=True)
        except Exception as error:
            raise ValueError(f"checkpoint {directory} is missing files or corrupt ({error}); cannot resume") from None
        saved_processes = saved.get("num_processes", 1)
        if saved_processes != self.accelerator.num_processes:
            raise ValueError(
                f"checkpoint {directory} was written by {saved_processes} processes, this run has "
                f"{self.accelerator.num_processes}: each step's batch would change (train.batch_size is per "
                "process); resume with the same launch"
            )
        parameters = trainable_parameters(self.unwrapped)
        if weights.keys() != parameters.keys():
            missing = ", ".join(sorted(parameters.keys() - weights.keys())[:3]) or "none"
            unexpected = ", ".join(sorted(weights.keys() - parameters.keys())[:3]) or "none"
            raise ValueError(f"checkpoint {directory} does not match this model's trainable parameters (missing: "
                             f"{missing}; not in the model: {unexpected})")
        with torch.no_grad():
            for name, parameter in parameters.items():
                copy_whole_into(parameter, weights[name])
        try:
            set_optimizer_state_dict(self.model, self.optimizer.optimizer, saved["optimizer"], options=WHOLE)
        except (KeyError, ValueError, RuntimeError) as error:
            raise ValueError(
                f"checkpoint {directory}: its optimizer state does not fit this model ({type(error).__name__}: "
                f"{error}); checkpoints keep it keyed by parameter name since radargate moved to whole optimizer "
                "state for FSDP, so one written before cannot resume (train again without --resume)"
            ) from None
        self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        if saved["cuda_rng"]:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        random.setstate(saved["python_rng"])
        state = TrainState(**saved["state"])
        if self.accelerator.is_main_process:
            log_rows = "".join(strict_json(row) + "\n" for row in state.history)
            atomic_write_text(self.run_dir / "log.jsonl", log_rows)
        return state


