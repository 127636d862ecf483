"""The record the per-step watch hands the replay at a bad step (``replay.localise(bad, report)``).

Its own module, so that ``watch`` and ``replay`` share it without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class BadStep:
    """What the replay needs to run a bad step again, from the state the step began with.

    ``model`` is what the watch watches (a ``keras.Model``, a ``tf.Module`` or a list of variables) and
    ``trainable`` its trainable variables; ``x``, ``y`` and ``sample_weight`` the step's batch. ``forward(x)`` runs
    the model in training mode (None for a list of variables); ``compute_loss(x, y, y_pred, sample_weight)`` is the
    loss the step computed (None when the watch saw none); ``scale_loss`` multiplies it by the loss scale the step
    used (the identity without a loss scaler); ``apply(gradients, variables)`` is the optimizer's own update (not
    the watched one). ``sparse_loss`` says whether the loss reads floating targets as class ids; ``overflow`` that
    the loss scaler skipped this step and its skipping persisted. ``loss_inputs`` are the targets and predictions
    the step gave ``watch.loss_fn`` when the watch has no forward pass to replay (a list of variables), else None.
    """

    model: object
    trainable: list
    x: object
    y: object
    sample_weight: object
    forward: Callable | None
    compute_loss: Callable | None
    scale_loss: Callable
    apply: Callable
    optimizer_name: str
    sparse_loss: bool = False
    overflow: bool = False
    loss_inputs: tuple | None = None
