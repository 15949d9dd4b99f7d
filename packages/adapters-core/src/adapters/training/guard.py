"""The check AdapterTrainer runs before training: adapters active, the model body frozen."""

from __future__ import annotations

from torch import nn

from ..errors import AdapterError
from .checkpoint import checkpoint_items


def check_adapter_training(model: nn.Module, allow_trainable_base: bool = False) -> None:
    """Raise unless ``model`` trains adapters (and heads) on a frozen body.

    The body counts as frozen when none of its parameters is trainable except those of checkpoint
    items (adapters, fusions) and the input embeddings (``train_adapter(..., train_embeddings=True)``).
    Parameters outside the body (the head) may be trainable; they are saved in ``head.safetensors``.

    Example:
        >>> model.add_adapter("sst2", set_active=True)  # doctest: +SKIP
        >>> check_adapter_training(model)  # doctest: +SKIP
        Traceback (most recent call last):
        AdapterError: 201 parameters of the model body are trainable ... call model.train_adapter(...)
    """
    state = getattr(model, "adapters_state", None)
    if state is None:
        raise AdapterError(
            "AdapterTrainer needs a model prepared with adapters.init(model), an adapter added with "
            "add_adapter() and made trainable with train_adapter(); for full fine-tuning use transformers.Trainer."
        )
    if state.active_setup is None:
        raise AdapterError(
            "The model has no active adapter setup. Call model.train_adapter(name) before training "
            "(for full fine-tuning use transformers.Trainer)."
        )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise AdapterError("The model has no trainable parameter. Call model.train_adapter(name) before training.")
    if allow_trainable_base:
        return
    covered = {id(p) for kind, name in checkpoint_items(model) for _, p in kind.parameters(model, name)}
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    embedding_ids = {id(p) for p in embeddings.parameters()} if embeddings is not None else set()
    prefix = state.base_prefix
    offenders = [
        f"{prefix}{n}"
        for n, p in state.base_model.named_parameters()
        if p.requires_grad and id(p) not in covered and id(p) not in embedding_ids
    ]
    if offenders:
        raise AdapterError(
            f"{len(offenders)} parameters of the model body are trainable (e.g. {offenders[:3]}), but AdapterTrainer "
            "trains adapters on a frozen model. Call model.train_adapter(name), which freezes the body, before "
            "training; or pass allow_trainable_base=True to AdapterTrainer to train and save them too."
        )
