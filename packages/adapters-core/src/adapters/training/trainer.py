"""``transformers.Trainer`` subclasses whose checkpoints hold adapters (and heads), not the frozen model."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import Seq2SeqTrainer, Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME

from .checkpoint import load_checkpoint, save_checkpoint
from .guard import check_adapter_training

logger = logging.getLogger(__name__)


class _CheckBeforeTraining(TrainerCallback):
    # A callback, not a check in __init__: the model may be set up (or made by model_init) later.
    def __init__(self, trainer: AdapterTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The unwrapped model: under FSDP the callback's `model` is the wrapper.
        check_adapter_training(self.trainer._adapter_model(), self.trainer.allow_trainable_base)


class AdapterTrainer(Trainer):
    """A ``transformers.Trainer`` for adapters: checkpoints and ``save_model`` hold only what is trained.

    Each checkpoint holds the adapters of the active setup and every trainable adapter (one folder
    each, in the format of ``save_adapter``), ``head.safetensors`` with every other trainable
    parameter (the static head such as ``classifier``), the manifest ``adapters_checkpoint.json``,
    and the usual optimizer, scheduler and trainer state. ``resume_from_checkpoint`` and
    ``load_best_model_at_end`` copy them back into the model's own parameters.

    Training refuses a model whose body has trainable parameters besides adapters and input
    embeddings (call ``model.train_adapter(name)`` first), unless ``allow_trainable_base=True``;
    those parameters are then saved in ``head.safetensors`` too.

    While an AdapterFusion with ``regularization`` (the ``"dynamic"`` config) trains, the loss is
    the task loss plus ``model.get_fusion_regularization_loss()`` (``0.01 * sum ||I - V||^2``).

    Args:
        adapter_names: a setup to activate (``model.set_active_adapters``) before training.
        allow_trainable_base: train body parameters that are not frozen, instead of refusing.
        tokenizer: the reference library's name for ``processing_class``.
        Everything else is passed to ``transformers.Trainer``.

    Example:
        >>> import adapters
        >>> from adapters import AdapterTrainer
        >>> from transformers import TrainingArguments
        >>> adapters.init(model)  # doctest: +SKIP
        >>> model.add_adapter("sst2", config="lora")  # doctest: +SKIP
        >>> model.train_adapter("sst2")  # doctest: +SKIP
        >>> trainer = AdapterTrainer(model=model, args=TrainingArguments("out"), train_dataset=data)  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
        >>> trainer.save_model("out/final")  # doctest: +SKIP
        >>> # out/final/sst2/adapter.safetensors, out/final/head.safetensors, out/final/adapters_checkpoint.json
    """

    def __init__(
        self,
        *args: Any,
        adapter_names: Any = None,
        allow_trainable_base: bool = False,
        tokenizer: Any = None,
        **kwargs: Any,
    ) -> None:
        if tokenizer is not None:
            kwargs.setdefault("processing_class", tokenizer)
        super().__init__(*args, **kwargs)
        self.allow_trainable_base = allow_trainable_base
        self.add_callback(_CheckBeforeTraining(self))
        if adapter_names is not None:
            self.model.set_active_adapters(adapter_names)

    def _adapter_model(self) -> Any:
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """The task loss, plus AdapterFusion's value regularization while a fusion with one trains.

        The term (``model.get_fusion_regularization_loss()``, ``None`` unless a fusion with
        ``regularization`` has a trainable value matrix) is added in training only, so evaluation
        losses stay task losses. It counts once per optimizer step: ``training_step`` divides an
        unscaled loss by the accumulation steps, and an already scaled one gets the term divided here.
        """
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if not model.training:
            return result
        regularization = self._fusion_regularization(num_items_in_batch)
        if regularization is None:
            return result
        if return_outputs:
            loss, outputs = result
            return loss + regularization, outputs
        return result + regularization

    def _fusion_regularization(self, num_items_in_batch: Any) -> torch.Tensor | None:
        getter = getattr(self._adapter_model(), "get_fusion_regularization_loss", None)
        regularization = getter() if getter is not None else None
        if regularization is None:
            return None
        # Mirrors Trainer.training_step: a loss normalized over the accumulated batch is not divided there.
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (
                self.model_accepts_loss_kwargs and num_items_in_batch is not None
            ) or self.compute_loss_func is not None
        steps = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        return regularization / steps if scaled and steps > 1 else regularization

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Only the writing process saves; state_dict is the gathered full one under FSDP/DeepSpeed.
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        logger.info("Saving adapters to %s", output_dir)
        save_checkpoint(self._adapter_model(), output_dir, state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        logger.info("Loading adapters from %s", resume_from_checkpoint)
        load_checkpoint(self._adapter_model(), resume_from_checkpoint)

    def _load_best_model(self) -> None:
        if self.is_deepspeed_enabled:
            # DeepSpeed restores its own engine state from the checkpoint.
            super()._load_best_model()
            return
        logger.info(
            "Loading the best adapters from %s (score: %s).", self.state.best_model_checkpoint, self.state.best_metric
        )
        load_checkpoint(self._adapter_model(), self.state.best_model_checkpoint)


class Seq2SeqAdapterTrainer(AdapterTrainer, Seq2SeqTrainer):
    """:class:`AdapterTrainer` with ``Seq2SeqTrainer``'s generation-based evaluation.

    Example:
        >>> from adapters import Seq2SeqAdapterTrainer
        >>> from transformers import Seq2SeqTrainingArguments
        >>> trainer = Seq2SeqAdapterTrainer(  # doctest: +SKIP
        ...     model=model, args=Seq2SeqTrainingArguments("out", predict_with_generate=True), train_dataset=data)
    """
