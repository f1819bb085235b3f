"""Fine-tuning a mixture of LoRA experts (or PEFT's LoRA) on multiple-choice tasks.

The model learns to produce each training example's correct answer after its prompt (loss on the
answer tokens only). AdamW with linear warm-up and cosine decay, gradient accumulation and
clipping, mixed precision and multi-GPU through accelerate (``accelerate launch``). Batches are a
pure function of the step (``BatchSchedule``), and checkpoints hold the trainable weights, the
optimizer, the schedule, the random states and the log, so a resumed run continues exactly.

Run folder ``<output_dir>/<name>/``: ``config.yaml``, ``log.jsonl`` (one row per step),
``checkpoint/`` (replaced atomically), ``adapter/`` (the final adapter, loadable by
``MoLoRAModel.from_pretrained`` or PEFT), ``result.json``.

A step whose loss or gradient norm is not finite is skipped (no optimizer update) and logged with
``"skipped": true`` and the offending values as strings under ``"nonfinite"`` (the numbers
themselves are ``null``: the log is strict JSON). ``train.max_nonfinite_steps`` such steps in a
row stop the run with ``TrainingDiverged``; weights that are not finite are never saved.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import random
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from radargate.data.batching import EncodedPair, answer_logprobs, collate, encode_pair
from radargate.data.bigbench import MCExample, load_suite
from radargate.errors import TrainingDiverged
from radargate.evaluate import evaluate_multiple_choice
from radargate.experiment import ExperimentConfig
from radargate.files import atomic_write_bytes, atomic_write_text, strict_json
from radargate.gates import GATES
from radargate.loading import DEFAULT_MODEL, load_model_and_tokenizer
from radargate.model import MoLoRAModel, get_molora_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# -- models ---------------------------------------------------------------------------------------


def attach_method(base: torch.nn.Module, config: ExperimentConfig) -> torch.nn.Module:
    """The model ``config.method`` trains: the base itself, PEFT's LoRA, or a mixture."""
    adapter = config.adapter
    if config.method == "base":
        return base.requires_grad_(False)
    if config.method == "lora":
        rank = adapter.num_experts * adapter.r
        lora = LoraConfig(
            r=rank,
            lora_alpha=adapter.alpha * adapter.num_experts,  # same alpha / r scale as each expert
            lora_dropout=adapter.dropout,
            target_modules=adapter.target_modules,
        )
        with peft_without_its_own_deprecations():
            return get_peft_model(base, lora)
    return get_molora_model(base, adapter)


def build_model(config: ExperimentConfig):
    """Load the base model and tokenizer and attach the method's adapter."""
    base, tokenizer = load_base(config)
    return attach_method(base, config), tokenizer


def load_base(config: ExperimentConfig):
    """The base model and tokenizer of ``config.model``; a name that cannot be loaded is a ``ValueError``
    naming it (transformers' own ``OSError`` would read as a disk problem)."""
    try:
        return load_model_and_tokenizer(config.model.name, dtype=DTYPES[config.model.dtype])
    except FileNotFoundError:
        raise
    except OSError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"model.name={config.model.name!r} could not be loaded ({reason}); use a folder saved with "
            f"save_pretrained, a Hugging Face model id (needs the network or the local Hugging Face cache), "
            f"or {DEFAULT_MODEL!r}, the built-in default that works offline"
        ) from None


TRAINED_SETTINGS = ("method", "model", "adapter", "train")
"""What made a trained run's weights: evaluation overrides may not change them."""


def load_trained(run_dir: str | Path, overrides: Sequence[str] = ()):
    """The model, tokenizer and config of a finished run, from its ``config.yaml`` and ``adapter/``.

    ``overrides`` (``--set``) may change how it is evaluated (data, eval), not what was trained.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: config.yaml is missing")
    config = ExperimentConfig.load(config_path, overrides)
    saved = ExperimentConfig.load(config_path).to_dict()
    changed = [key for key in TRAINED_SETTINGS if config.to_dict()[key] != saved[key]]
    if changed:
        raise ValueError(f"--set cannot change {', '.join(changed)} of the trained run {run_dir}; only evaluation "
                         "settings (data, eval) may change: to evaluate other settings, train a run with them")
    base, tokenizer = load_base(config)
    adapter_dir = run_dir / "adapter"
    if config.method == "base":
        return base.eval(), tokenizer, config
    if not adapter_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} has no trained adapter ({adapter_dir} is missing); finish training first")
    if config.method == "lora":
        return _load_peft_adapter(base, adapter_dir).eval(), tokenizer, config
    return MoLoRAModel.from_pretrained(base, adapter_dir).eval(), tokenizer, config


def _load_peft_adapter(base: torch.nn.Module, adapter_dir: Path) -> PeftModel:
    """PEFT's loader, with a damaged file reported by name instead of a reader's traceback."""
    weights = adapter_dir / "adapter_model.safetensors"
    try:
        with safe_open(str(weights), framework="pt") as reader:
            reader.keys()
    except (SafetensorError, OSError) as error:
        raise ValueError(f"adapter file {weights} is missing, truncated or corrupt ({error}); "
                         "train the run again or pick another") from None
    with peft_without_its_own_deprecations():
        return PeftModel.from_pretrained(base, adapter_dir)


@contextlib.contextmanager
def peft_without_its_own_deprecations() -> Iterator[None]:
    """peft's ``PeftModel.__init__`` reads transformers' deprecated ``is_gradient_checkpointing``: a warning
    from peft's code that no caller can avoid, and that would tell a user something of theirs will break."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def describe_adapter(model: torch.nn.Module) -> dict[str, Any]:
    """What the model actually carries, read from its layers (not from the config that asked for it)."""
    if isinstance(model, MoLoRAModel):
        layers = model.molora_layers.values()
        return {
            "kind": "mixture",
            "gates": sorted({name for layer in layers for name, gate in GATES.items() if type(layer.gate) is gate}),
            "num_experts": sorted({layer.experts.num_experts for layer in layers}),
            "r": sorted({layer.experts.r for layer in layers}),
            "layers": len(layers),
        }
    if isinstance(model, PeftModel):
        ranks = {module.r[name] for module in model.modules() if isinstance(getattr(module, "r", None), dict)
                 for name in module.r}
        return {"kind": "peft_lora", "r": sorted(ranks)}
    return {"kind": "none"}


def save_adapter(model: torch.nn.Module, directory: Path) -> None:
    """The final adapter in its library's own format (radargate or PEFT)."""
    if isinstance(model, (MoLoRAModel, PeftModel)):
        model.save_pretrained(directory)


# -- data -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSchedule:
    """Which training examples form each micro-batch, as a function of the step alone.

    The examples are read in epochs, each a fresh permutation seeded by ``(seed, epoch)``; so
    batches never depend on what ran before, which makes resuming exact.
    """

    num_examples: int
    batch_size: int
    grad_accum: int
    seed: int
    num_processes: int = 1

    def micro_batch(self, step: int, micro: int, process: int = 0) -> list[int]:
        per_step = self.batch_size * self.grad_accum * self.num_processes
        start = step * per_step + (micro * self.num_processes + process) * self.batch_size
        return [self._example_at(position) for position in range(start, start + self.batch_size)]

    def _example_at(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_examples)
        return _permutation(self.num_examples, self.seed, epoch)[offset]


@functools.lru_cache(maxsize=4)
def _permutation(size: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(size, generator=generator).tolist()


def encode_training_examples(tokenizer, examples: list[MCExample], max_length: int) -> list[EncodedPair]:
    """Each example's prompt followed by its correct answer."""
    encoded = []
    for example in examples:
        context, continuations = example.scoring_pairs()
        encoded.append(encode_pair(tokenizer, context, continuations[example.answer], max_length))
    return encoded


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


def mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def autocast_dtype(setting: str) -> torch.dtype | None:
    """The autocast dtype that evaluation uses to match training's mixed precision."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision(setting))


def load_splits(config: ExperimentConfig) -> dict[str, list[MCExample]]:
    """The train / validation / test examples of ``config.data``."""
    return load_suite(config.data.tasks, seed=config.data.split_seed, max_per_split=config.data.caps)


def train(
    config: ExperimentConfig,
    *,
    resume: bool = False,
    run_dir: Path | None = None,
    show_progress: bool = True,
    splits: dict[str, list[MCExample]] | None = None,
):
    """Train ``config.method`` and return ``(model, tokenizer, state)``; see the module docstring.

    ``splits`` saves reloading the data when the caller already has ``load_splits(config)``.
    """
    run_dir = Path(run_dir or config.run_dir)
    _prepare_run_dir(run_dir, config, resume)
    torch.manual_seed(config.train.seed)
    random.seed(config.train.seed)
    model, tokenizer = build_model(config)
    splits = splits or load_splits(config)
    state = TrainState()
    if config.method == "base":
        return model, tokenizer, state
    trainer = _Trainer(config, model, tokenizer, splits, run_dir)
    if resume:
        state = trainer.restore()
    trainer.run(state, show_progress=show_progress)
    return trainer.unwrapped, tokenizer, state


def _prepare_run_dir(run_dir: Path, config: ExperimentConfig, resume: bool) -> None:
    saved = run_dir / "config.yaml"
    if saved.is_file():
        if not resume:
            raise FileExistsError(
                f"{run_dir} already holds a run; pass --resume to continue it, or choose another name"
            )
        check_same_run(run_dir, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, config.to_yaml())


IRRELEVANT_TO_A_RUN = ("output_dir", "name", "compare", "study")
"""Settings that do not change what one run computes (where it lives, which others run beside it)."""


def check_same_run(run_dir: Path, config: ExperimentConfig) -> None:
    """Refuse to continue (or reuse) a run with settings other than those it was made with."""
    previous = ExperimentConfig.load(run_dir / "config.yaml").to_dict()
    current = config.to_dict()
    for key in IRRELEVANT_TO_A_RUN:
        previous.pop(key, None)
        current.pop(key, None)
    changed = _differences(previous, current)
    if changed:
        raise ValueError(f"cannot resume {run_dir} with a different config; changed: {', '.join(changed[:8])}")


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changed


class _Trainer:
    def __init__(self, config: ExperimentConfig, model, tokenizer, splits: dict[str, list[MCExample]], run_dir: Path):
        settings = config.train
        self.config, self.tokenizer, self.run_dir = config, tokenizer, run_dir
        self.validation_examples = splits["validation"]
        self.train_pairs = encode_training_examples(tokenizer, splits["train"], config.data.max_length)
        if not self.train_pairs:
            raise ValueError(f"no training examples for tasks {config.data.tasks}")
        self.accelerator = Accelerator(mixed_precision=mixed_precision(settings.precision))
        if settings.compile and isinstance(model, MoLoRAModel):
            model.compile_layers()
        parameters = list(trainable_parameters(model).values())
        optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
        scheduler = get_cosine_schedule_with_warmup(optimizer, settings.warmup_steps, settings.steps)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.unwrapped = self.accelerator.unwrap_model(self.model)
        self.schedule = BatchSchedule(
            len(self.train_pairs), settings.batch_size, settings.grad_accum, settings.seed,
            self.accelerator.num_processes,
        )

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
                row = self._step(state.step)
                state.train_time_s += time.perf_counter() - started
                state.step += 1
                state.tokens += row["tokens"]
                state.history.append(row)
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
        if self.accelerator.is_main_process:
            save_adapter(self.unwrapped, self.run_dir / "adapter")

    def _step(self, step: int) -> dict[str, Any]:
        settings = self.config.train
        self.model.train()
        totals = {"loss": 0.0, "lm_loss": 0.0, "tokens": 0}
        for micro in range(settings.grad_accum):
            indices = self.schedule.micro_batch(step, micro, self.accelerator.process_index)
            batch = collate([self.train_pairs[i] for i in indices], self.tokenizer.pad_token_id)
            lm_loss, aux = self._losses(batch.to(self.accelerator.device))
            loss = (lm_loss + aux) / settings.grad_accum
            self.accelerator.backward(loss)
            totals["loss"] += float(loss.detach())
            totals["lm_loss"] += float(lm_loss.detach()) / settings.grad_accum
            totals["tokens"] += int(batch.attention_mask.sum())
        grad_norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), settings.max_grad_norm))
        nonfinite = {name: str(value) for name, value in (("loss", totals["loss"]), ("grad_norm", grad_norm))
                     if not math.isfinite(value)}
        if not nonfinite or self._scaler_handles(nonfinite):
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        row = {"step": step + 1, **totals, "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm}
        return {**row, "skipped": True, "nonfinite": nonfinite} if nonfinite else row

    def _scaler_handles(self, nonfinite: dict[str, str]) -> bool:
        """fp16: a finite loss with overflowed gradients is the grad scaler's business; its step skips
        the update and lowers the scale, which it must do for training to go on."""
        return self.accelerator.scaler is not None and "loss" not in nonfinite

    def _count_nonfinite(self, state: TrainState, row: dict[str, Any]) -> None:
        """Count skipped steps; stop after ``train.max_nonfinite_steps`` in a row (fp16 overflows aside)."""
        if not row.get("skipped"):
            state.nonfinite_in_a_row = 0
            return
        state.skipped_steps += 1
        if self._scaler_handles(row["nonfinite"]):
            return
        state.nonfinite_in_a_row += 1
        limit = self.config.train.max_nonfinite_steps
        if state.nonfinite_in_a_row >= limit:
            values = ", ".join(f"{name}={value}" for name, value in row["nonfinite"].items())
            raise TrainingDiverged(
                f"training diverged: {limit} steps in a row had a non-finite loss or gradient norm, the last "
                f"at step {row['step']} ({values}); stopped without saving (train.max_nonfinite_steps={limit}). "
                f"{self._likely_causes()} The last finite checkpoint, if any, is in {self.run_dir / 'checkpoint'}."
            )

    def _likely_causes(self) -> str:
        settings = self.config.train
        causes = f"Likely causes: a learning rate too high (train.lr={settings.lr}; try 10x lower)"
        if mixed_precision(settings.precision) != "no":
            causes += f", or half precision overflowing (train.precision={settings.precision}; try no)"
        return causes + "."

    def _losses(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean negative log-likelihood of the answer tokens, and the weighted auxiliary losses."""
        kwargs = {"with_aux": True} if isinstance(self.unwrapped, MoLoRAModel) else {}
        logprobs, mask, output = answer_logprobs(self.model, batch, **kwargs)
        lm_loss = -logprobs.sum() / mask.sum().clamp_min(1)
        aux = output.get("aux_loss") if isinstance(output, dict) else None
        return lm_loss, aux if aux is not None else torch.zeros((), device=lm_loss.device)

    def validate(self, step: int) -> dict[str, Any]:
        result = evaluate_multiple_choice(
            self.unwrapped, self.tokenizer, self.validation_examples,
            batch_size=self.config.eval.batch_size, max_length=self.config.data.max_length,
            autocast_dtype=autocast_dtype(self.config.train.precision),
        )
        return {"step": step, "macro_acc": result["macro_acc"], "macro_acc_norm": result["macro_acc_norm"]}

    # -- checkpoints: a folder written beside the old one, then swapped in -------------------------

    def require_finite_weights(self) -> None:
        """A model with non-finite weights is never saved, evaluated or reported."""
        bad = [name for name, p in trainable_parameters(self.unwrapped).items() if not torch.isfinite(p).all()]
        if bad:
            raise TrainingDiverged(
                f"training diverged: {len(bad)} trainable tensors hold non-finite values (first: {bad[0]}); "
                f"nothing was saved. {self._likely_causes()}"
            )

    def save_checkpoint(self, state: TrainState) -> None:
        self.require_finite_weights()
        if not self.accelerator.is_main_process:
            return
        final, fresh, old = (self.run_dir / name for name in ("checkpoint", "checkpoint.tmp", "checkpoint.old"))
        shutil.rmtree(fresh, ignore_errors=True)
        try:
            self._write_checkpoint_files(fresh, state)
        except OSError:  # a full or read-only disk: the previous checkpoint stays as it was
            shutil.rmtree(fresh, ignore_errors=True)
            raise
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        fresh.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def _write_checkpoint_files(self, directory: Path, state: TrainState) -> None:
        """Weights and trainer state, serialised in memory and written by Python (so a failed write is an
        ``OSError`` naming the file) with fsync, as every file the project writes."""
        directory.mkdir()
        weights = {name: p.detach().cpu().contiguous() for name, p in trainable_parameters(self.unwrapped).items()}
        atomic_write_bytes(directory / "trainable.safetensors", save_safetensors(weights))
        trainer_state = io.BytesIO()
        torch.save(
            {
                "state": state.__dict__,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python_rng": random.getstate(),
            },
            trainer_state,
        )
        atomic_write_bytes(directory / "trainer_state.pt", trainer_state.getvalue())

    def restore(self) -> TrainState:
        """Load the last checkpoint (or the previous one, if a crash hit between the two renames), and
        cut the log back to it; with no checkpoint yet, the run starts over with an empty log."""
        directory = next((self.run_dir / name for name in ("checkpoint", "checkpoint.old")
                          if (self.run_dir / name).is_dir()), None)
        if directory is None:
            atomic_write_text(self.run_dir / "log.jsonl", "")
            return TrainState()
        try:
            weights = load_file(str(directory / "trainable.safetensors"))
            saved = torch.load(directory / "trainer_state.pt", weights_only=True)
        except Exception as error:
            raise ValueError(f"checkpoint {directory} is missing files or corrupt ({error}); cannot resume") from None
        parameters = trainable_parameters(self.unwrapped)
        if weights.keys() != parameters.keys():
            raise ValueError(f"checkpoint {directory} does not match this model's trainable parameters")
        with torch.no_grad():
            for name, parameter in parameters.items():
                parameter.copy_(weights[name])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        if saved["cuda_rng"]:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        random.setstate(saved["python_rng"])
        state = TrainState(**saved["state"])
        log_rows = "".join(strict_json(row) + "\n" for row in state.history)
        atomic_write_text(self.run_dir / "log.jsonl", log_rows)
        return state


def summarize(config: ExperimentConfig, model, state: TrainState) -> dict[str, Any]:
    """The training half of a method's result (evaluation adds the rest)."""
    trainable = sum(p.numel() for p in trainable_parameters(model).values())
    return {
        "method": config.method,
        "adapter": describe_adapter(model),
        "trainable_params": trainable,
        "skipped_steps": state.skipped_steps,
        "train_time_s": state.train_time_s,
        "tokens_per_s": state.tokens / state.train_time_s if state.train_time_s else None,
        "final_train_loss": smoothed_final_loss(state.history),
        "history": state.history,
        "validation": state.validation,
        "steps": state.step,
    }


def smoothed_final_loss(history: list[dict[str, Any]], window: int = 10) -> float | None:
    """Mean LM loss over the last ``window`` steps: one batch's loss is noisy."""
    losses = [row["lm_loss"] for row in history[-window:] if not row.get("skipped")]
    return sum(losses) / len(losses) if losses else None

