"""One fine-tuning run: attach a method to a fresh model, train it, evaluate it, count parameters."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import adapters
from adapters import AdapterError

from .methods import Method
from .tasks import PreparedTask

ADAPTER_NAME = "task"
# Raised while attaching a method the installed library (or this model's plugin) does not provide.
NOT_AVAILABLE_ERRORS = (AdapterError, NotImplementedError)


@dataclass(frozen=True)
class TrainSetup:
    """The optimisation recipe shared by every run (AdamW, linear schedule with warm-up).

    Example:
        >>> TrainSetup(seed=0, device=torch.device("cpu")).warmup_ratio
        0.1
    """

    seed: int
    device: torch.device
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 turns clipping off


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def head_parameter_names(model: nn.Module) -> set[str]:
    """Parameters outside the transformer body (the task head, e.g. ``classifier.*``)."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    return {n for n, _ in model.named_parameters() if not n.startswith(prefix)}


def attach(model: nn.Module, method: Method) -> None:
    """Make exactly the method's parameters (and the head) trainable; full fine-tuning trains all."""
    if method.is_full:
        model.requires_grad_(True)
        return
    adapters.init(model)
    model.add_adapter(ADAPTER_NAME, config=method.config)
    model.train_adapter(ADAPTER_NAME)
    # train_adapter freezes the body only; the freshly initialised head has to learn as well.
    heads = head_parameter_names(model)
    for name, param in model.named_parameters():
        if name in heads:
            param.requires_grad_(True)


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters without the head, trainable parameters with it)."""
    heads = head_parameter_names(model)
    body = head = 0
    for name, param in model.named_parameters():
        if param.requires_grad:
            if name in heads:
                head += param.numel()
            else:
                body += param.numel()
    return body, body + head


def train(model: nn.Module, task: PreparedTask, lr: float, setup: TrainSetup) -> dict:
    """AdamW over every trainable parameter at one lr, linear decay after a linear warm-up."""
    from transformers import get_linear_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=setup.weight_decay)
    total = sum(len(batches) for batches in task.train_epochs)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(setup.warmup_ratio * total), total)
    torch.manual_seed(setup.seed)  # the same dropout stream for every method
    model.train()
    epoch_losses = []
    _sync(setup.device)
    start = time.perf_counter()
    for batches in task.train_epochs:
        loss_sum = torch.zeros((), device=setup.device)  # summed on the device: no per-step sync
        for batch in batches:
            loss = model(**batch).loss
            loss.backward()
            if setup.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, setup.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
        epoch_losses.append(loss_sum)
    _sync(setup.device)
    seconds = time.perf_counter() - start
    losses = [round(float(s) / len(b), 4) for s, b in zip(epoch_losses, task.train_epochs, strict=True)]
    return {"train_seconds": seconds, "steps": total, "epoch_losses": losses}


@torch.inference_mode()
def evaluate(model: nn.Module, task: PreparedTask) -> dict:
    model.eval()
    preds = torch.cat(
        [model(**{k: v for k, v in b.items() if k != "labels"}).logits.argmax(-1) for b in task.dev_batches]
    )
    preds = preds.cpu()
    labels = task.dev_labels
    result = {"dev_accuracy": float((preds == labels).float().mean())}
    if task.report_f1:
        tp = int(((preds == 1) & (labels == 1)).sum())
        fp = int(((preds == 1) & (labels == 0)).sum())
        fn = int(((preds == 0) & (labels == 1)).sum())
        result["dev_f1"] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return result


def _failed(row: dict, status: str, exc: BaseException) -> dict:
    failed = {**row, "status": status, "message": f"{type(exc).__name__}: {exc}"}
    if status == "error":
        failed["traceback"] = traceback.format_exc()
    return failed


def run_one(
    method: Method,
    lr: float,
    task: PreparedTask,
    model_factory: Callable[[int], nn.Module],
    setup: TrainSetup,
) -> dict:
    """Train and evaluate one (method, lr); never raises: failures become a row with a status.

    ``model_factory(seed)`` returns a fresh model with a newly initialised head (on the CPU).
    Status: ``ok``; ``not available`` (the installed library has no such method, or it does not
    support this model); ``error`` (anything else; the traceback is kept).
    """
    row: dict = {"task": task.name, "method": method.name, "config": method.config or "full", "lr": lr}
    row["device"] = str(setup.device)
    torch.manual_seed(setup.seed)
    model = model_factory(setup.seed)
    row["model_params"] = sum(p.numel() for p in model.parameters())
    try:
        attach(model, method)
    except NOT_AVAILABLE_ERRORS as exc:
        return _failed(row, "not available", exc)
    except Exception as exc:
        return _failed(row, "error", exc)
    trainable, with_head = count_trainable(model)
    row.update(trainable=trainable, trainable_with_head=with_head, percent=100.0 * trainable / row["model_params"])
    try:
        model.to(setup.device)
        row.update(train(model, task, lr, setup))
        start = time.perf_counter()
        row.update(evaluate(model, task))
        row["eval_seconds"] = time.perf_counter() - start
    except Exception as exc:
        return _failed(row, "error", exc)
    finally:
        del model
        if setup.device.type == "cuda":
            torch.cuda.empty_cache()
    return {**row, "status": "ok"}
