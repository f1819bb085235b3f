"""The ``train`` and ``eval`` sections: how one run trains, and how it is scored after training."""

from __future__ import annotations

from dataclasses import dataclass, field

from accelerate.tracking import LOGGER_TYPE_TO_CLASS

from radargate.validation import require_bool, require_choice, require_int, require_number

PRECISIONS = ("auto", "no", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class TrainSettings:
    steps: int = 200
    """Optimizer steps."""
    batch_size: int = 8
    """Sequences per device per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (gradient accumulation)."""
    lr: float = 2e-4
    """Peak learning rate (after warm-up, before the cosine decay)."""
    weight_decay: float = 0.0
    """The optimizer's weight decay."""
    optimizer: str = "adamw"
    """``adamw`` or ``sgd`` (momentum 0.9; its update is linear in the gradient, which makes runs comparable
    to float rounding: AdamW's first steps divide near-zero gradients by their own size)."""
    warmup_steps: int = 10
    """Steps of linear warm-up of the learning rate."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this total norm."""
    precision: str = "auto"
    """``auto``: bf16 autocast where the hardware computes bf16 natively (a GPU that has it, a CPU with AVX512-BF16 or
    AMX), else full precision; or ``no``/``bf16``/``fp16``."""
    seed: int = 0
    """Seed of the adapter's initialisation, the batches and dropout."""
    eval_every: int = 0
    """Validation accuracy every this many steps (0: only at the end)."""
    save_every: int = 50
    """Checkpoint every this many steps (and at the end); a killed run resumes from the last one."""
    max_nonfinite_steps: int = 3
    """Steps in a row with a non-finite loss or gradient norm (each skipped) before the run stops."""
    max_skipped_share: float = 0.1
    """The most steps a run may skip as non-finite, as a share of ``steps`` (at most ``floor(share * steps)``
    of them, in a row or not). One more, or a skipped last step, and the run fails as diverged instead of
    ending on the weights of a run that was going wrong. In [0, 1]: 0 fails the run at its first skipped
    step, 1 only at a skipped last step. fp16 overflows that the grad scaler handles do not count."""
    compile: bool = False
    """``torch.compile`` each mixture layer (dynamic shapes). Pays on GPUs; on CPUs it measured slower."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers (any that accelerate supports: ``tensorboard``, ``wandb``, ``mlflow``, ...), logging
    per step the loss, each auxiliary loss, gradient norm, learning rate, tokens/s and the routing entropy
    of every mixture layer into ``<run>/tracking/``. Empty (the default): none."""

    def __post_init__(self) -> None:
        require_bool("train.compile", self.compile)
        for tracker in self.report_to:
            require_choice("train.report_to", tracker, sorted(LOGGER_TYPE_TO_CLASS))
        for name in ("steps", "batch_size", "grad_accum", "save_every", "max_nonfinite_steps"):
            require_int(f"train.{name}", getattr(self, name), minimum=1)
        for name in ("warmup_steps", "eval_every", "seed"):
            require_int(f"train.{name}", getattr(self, name), minimum=0)
        require_number("train.lr", self.lr, low=0.0, low_inclusive=False)
        require_number("train.weight_decay", self.weight_decay, low=0.0)
        require_number("train.max_grad_norm", self.max_grad_norm, low=0.0, low_inclusive=False)
        require_number("train.max_skipped_share", self.max_skipped_share, low=0.0, high=1.0)
        require_choice("train.precision", self.precision, PRECISIONS)
        require_choice("train.optimizer", self.optimizer, OPTIMIZERS)


@dataclass
class EvalSettings:
    batch_size: int = 16
    """Sequences (prompt + one choice) per forward pass."""
    fit_per_task: int = 20
    """Training examples per task (the first ones of the train split) scored after training, in eval mode:
    how well each method fits what it was trained on (0: skip)."""

    def __post_init__(self) -> None:
        require_int("eval.batch_size", self.batch_size, minimum=1)
        require_int("eval.fit_per_task", self.fit_per_task, minimum=0)


