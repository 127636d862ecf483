"""The PyTorch training loop that records loss, gradient norm and the first non-finite step.

Recording does not change the numerics: the gradient norm is computed from the gradients (in float64, so that
finite gradients never report an overflowed norm) without touching them, and clipping, when a fix asks for it, is
the plain ``torch.nn.utils.clip_grad_norm_`` call a user would write.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from nanlab.data import minibatch_indices
from nanlab.lr_range import RangeTestTracker
from nanlab.run import History
from nanlab.training import Training as BaseTraining

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Training(BaseTraining):
    """A PyTorch training run: ``loss_fn(output, target)``; optional global-norm clipping, an LR schedule and a
    mixed-precision loss scaler (``torch.amp.GradScaler``).

    With a ``scaler`` the step is the AMP recipe from the PyTorch docs: backward on the scaled loss, ``unscale_``
    (so the recorded norm and any clipping see true gradients), ``scaler.step``, ``scaler.update``. A step the
    scaler skips has non-finite gradients, so ``train`` stops there like at any other non-finite step.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    batches: Iterator[Batch]
    evaluate: Callable[[nn.Module], float]
    max_grad_norm: float | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None


def minibatches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, device: str) -> Iterator[Batch]:
    """Endless shuffled minibatches of ``(x, y)`` as tensors on ``device``."""
    features, targets = torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)
    for index in minibatch_indices(len(x), batch_size, seed):
        index = torch.as_tensor(index, device=device)
        yield features[index], targets[index]


def accuracy(x: np.ndarray, y: np.ndarray, device: str) -> Callable[[nn.Module], float]:
    """An ``evaluate`` function: the model's accuracy on held-out ``(x, y)``."""
    features, labels = torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> float:
        return (model(features).argmax(dim=-1) == labels).float().mean().item()

    return evaluate


def gradient_norm(parameters: list[nn.Parameter]) -> torch.Tensor:
    """The global L2 norm of the gradients, accumulated in float64; the gradients are not modified."""
    norms = [p.grad.detach().norm(dtype=torch.float64) for p in parameters if p.grad is not None]
    return torch.stack(norms).norm() if norms else torch.zeros((), dtype=torch.float64)


def train_step(training: Training, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; returns the loss and the global gradient norm (before any clipping)."""
    model, optimizer, scaler = training.model, training.optimizer, training.scaler
    optimizer.zero_grad()
    loss = training.loss_fn(model(x), y)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    parameters = [p for p in model.parameters() if p.requires_grad]
    norm = gradient_norm(parameters)
    if training.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(parameters, training.max_grad_norm)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)  # skipped when the unscaled gradients hold Inf/NaN
        scaler.update()
    if training.scheduler is not None:
        training.scheduler.step()
    return loss, norm


def train(training: Training, steps: int, history: History | None = None) -> History:
    """Train for ``steps`` steps, stopping at the first step whose loss or gradient norm is non-finite.

    One host synchronisation per step: the loss and the norm come back together. Steps are recorded into
    ``history`` when given, so that a caller keeps the steps before an exception. Under ``nanlab.watch(training,
    on_nonfinite="skip")`` a step whose update the watch dropped is not recorded and training goes on, as in a loop
    of one's own.
    """
    training.model.train()
    history = history if history is not None else History()
    for _ in range(steps):
        x, y = next(training.batches)
        loss, norm = torch.stack([value.detach().double() for value in train_step(training, x, y)]).tolist()
        if training.watch_decides(math.isfinite(loss) and math.isfinite(norm)):
            continue  # a step the watch skipped: its update did not happen, and training goes on
        if not history.record(loss, norm):
            return history
    training.model.eval()
    return history


def lr_range_test(training: Training, lr_min: float = 1e-4, lr_max: float = 100.0, steps: int = 60) -> float:
    """Leslie Smith's LR range test: raise the learning rate exponentially, one step each, and watch the loss.

    Returns a tenth of the rate at which the smoothed loss was lowest (the usual "minimum / 10" rule). The model
    and the optimizer are restored afterwards; only ``training.batches`` is consumed.
    """
    model_state = copy.deepcopy(training.model.state_dict())
    optimizer_state = copy.deepcopy(training.optimizer.state_dict())
    tracker = RangeTestTracker(lr_min, lr_max, steps)
    for lr in tracker.rates():
        for group in training.optimizer.param_groups:
            group["lr"] = lr
        x, y = next(training.batches)
        if not tracker.record(train_step(training, x, y)[0].item()):
            break
    training.model.load_state_dict(model_state)
    training.optimizer.load_state_dict(optimizer_state)
    return tracker.suggestion()
