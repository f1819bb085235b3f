"""Training a `MoLoRAModel` with the Hugging Face ``Trainer`` and TRL's ``SFTTrainer``.

A plain ``transformers.Trainer`` already trains a ``MoLoRAModel``: its forward shows the base model's
arguments (so ``remove_unused_columns`` keeps ``input_ids``, ``labels``...), and with labels its loss
includes the weighted auxiliary losses. ``MoLoRATrainer`` (or ``MoLoRATrainerMixin`` in front of any
``Trainer`` subclass) adds what the Trainer does for PEFT models by itself, and the auxiliary losses:

- checkpoints hold the adapter alone, as ``MoLoRAModel.save_pretrained`` writes it
  (``molora_model.safetensors`` with the experts and gates, ``molora_config.json``), never the base
  model; ``trainer.train(resume_from_checkpoint=...)`` and ``load_best_model_at_end`` read it back;
- the auxiliary losses (``MoLoRAConfig.load_balance_weight`` ...) are added to each micro-batch's
  loss scaled as the Trainer scales the LM loss for gradient accumulation (added inside the model's
  loss, they would count once per micro-batch when the Trainer passes ``num_items_in_batch``), and
  logged beside it: ``lm_loss``, ``aux_loss`` (the weighted sum) and ``aux/<name>`` (each loss,
  unweighted), averaged over the steps since the last log.

``MoLoRASFTTrainer`` is the same in front of TRL's ``SFTTrainer`` (``pip install radargate[trl]``);
TRL is imported only when that name is first used.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.utils import find_labels

from radargate.model import MoLoRAModel

__all__ = ["MoLoRATrainer", "MoLoRATrainerMixin"]  # and MoLoRASFTTrainer, made on first use


class MoLoRATrainerMixin:
    """Adapter-only checkpoints and logged auxiliary losses for a ``Trainer`` (subclass) of a ``MoLoRAModel``.

    Put it first among the bases: ``class MyTrainer(MoLoRATrainerMixin, SomeTrainer): ...``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.model, MoLoRAModel):
            raise TypeError(
                f"{type(self).__name__} trains a MoLoRAModel, got {type(self.model).__name__}; wrap the model with "
                "radargate.get_molora_model(model, config) first"
            )
        if self.args.label_names is None:  # the Trainer read them from MoLoRAModel.forward, which has *args
            self.label_names = find_labels(type(self.model.base_model))
        self._aux_sums: dict[str, torch.Tensor] = {}
        self._aux_micro_batches = 0

    # -- the auxiliary losses ----------------------------------------------------------------------

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        """The Trainer's loss (the model's own) plus the weighted auxiliary losses, scaled for gradient
        accumulation as the Trainer scales the former."""
        molora: MoLoRAModel = self.model
        with molora.aux_loss_apart():
            result = super().compute_loss(
                model, {**inputs, "with_aux": True}, return_outputs=return_outputs,
                num_items_in_batch=num_items_in_batch,
            )
        loss, outputs = result if return_outputs else (result, None)
        aux = molora.aux_losses()
        if aux:
            weighted = molora.weighted_aux_loss(aux).to(loss.device)
            if molora.training:
                self._record_aux(aux, weighted)
            loss = loss + weighted / self._aux_divisor(num_items_in_batch)
        if isinstance(outputs, dict):  # evaluation gathers what is left as predictions
            for key in ("aux_losses", "aux_loss", "lm_loss"):
                outputs.pop(key, None)
        return (loss, outputs) if return_outputs else loss

    def _aux_divisor(self, num_items_in_batch: torch.Tensor | int | None) -> int:
        """The number of accumulated micro-batches when the Trainer leaves the LM loss undivided (it was
        normalised by the tokens of the whole accumulated batch), else 1 (the Trainer divides the sum)."""
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
                self.compute_loss_func is not None
            )
        steps = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        return steps if scaled and self.model.training else 1

    def _record_aux(self, aux: dict[str, torch.Tensor], weighted: torch.Tensor) -> None:
        values = {"aux_loss": weighted, **{f"aux/{name}": value for name, value in aux.items()}}
        for key, value in values.items():
            value = value.detach().float()
            self._aux_sums[key] = self._aux_sums[key] + value if key in self._aux_sums else value
        self._aux_micro_batches += 1

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Training logs (those with ``loss``) get ``lm_loss``, ``aux_loss`` and ``aux/<name>``: means over the
        micro-batches since the last log, averaged over the processes."""
        if "loss" in logs and self._aux_micro_batches:
            for key, total in self._aux_sums.items():
                mean = total.reshape(1) / self._aux_micro_batches
                logs[key] = float(self.accelerator.gather(mean).mean())
            logs["lm_loss"] = logs["loss"] - logs["aux_loss"]
            self._aux_sums, self._aux_micro_batches = {}, 0
        super().log(logs, *args, **kwargs)

    # -- checkpoints: the adapter alone ------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """``save_pretrained`` of the experts and gates (and the tokenizer and training arguments, as the
        Trainer saves them); ``state_dict`` (a full one, from FSDP or DeepSpeed) is not used. Every process
        calls ``save_pretrained``: under FSDP2 it gathers the shards, a collective the saving process alone
        would wait on forever; only ``should_save`` writes."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir, is_main_process=self.args.should_save)
        if not self.args.should_save:
            return
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        target.load_pretrained_weights(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self.accelerator.unwrap_model(self.model).load_pretrained_weights(self.state.best_model_checkpoint)


class MoLoRATrainer(MoLoRATrainerMixin, Trainer):
    """``transformers.Trainer`` for a ``MoLoRAModel``: adapter-only checkpoints, logged auxiliary losses."""


def _sft_trainer_class() -> type:
    from trl import SFTTrainer

    class MoLoRASFTTrainer(MoLoRATrainerMixin, SFTTrainer):
        """TRL's ``SFTTrainer`` for a ``MoLoRAModel``: adapter-only checkpoints, logged auxiliary losses.

        ``SFTTrainer`` replaces the forward of the model it is given with one that computes the LM head's
        log-probabilities in chunks ("fused LM head"), calling the model's backbone itself; on the wrapper
        that would skip the wrapper's forward (and read ``base_model`` as the backbone). The replacement
        goes on the base model instead, below the wrapper's forward.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if "forward" in vars(self.model):
                from trl.trainer.utils import add_fused_lm_head

                del self.model.forward
                add_fused_lm_head(self.model.base_model, outputs=("log_probs", "entropy", "is_top1"))

    return MoLoRASFTTrainer


def __getattr__(name: str) -> Any:
    if name == "MoLoRASFTTrainer":  # imports TRL, an optional dependency, on first use only
        globals()[name] = _sft_trainer_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
