"""The records the per-step check (``watch.py``) and the replay (``replay.py``) share, and ``loss_of``.

Their own module so that neither of the two imports the other: the watch fills these records and imports the
replay only at a bad step, the replay reads them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class MicroBatch:
    """One forward pass of the current update, kept by reference: what the replay needs to run it again."""

    args: tuple
    kwargs: dict
    cpu_rng: torch.Tensor
    cuda_rng: list[torch.Tensor] | None
    autocast: tuple[tuple[str, torch.dtype], ...]
    target: Any = None
    loss_args: tuple = ()
    loss_kwargs: dict = field(default_factory=dict)
    has_loss: bool = False  # watch.loss_fn was called on this forward's output
    # The host's whole training computation of this micro-batch (``Watch.record_step``): the replay runs
    # ``step_fn(*args, **kwargs)`` and takes its loss with ``loss_of``, instead of the model's forward.
    step_fn: Callable | None = None


@dataclass
class BadStep:
    """Everything the replay (``replay.localise``) needs about the failing step."""

    module: nn.Module  # the model to replay (the wrapped module under DistributedDataParallel: no collectives; the
    # original module of a torch.compile'd model)
    params: list[nn.Parameter]
    names: dict[int, str]
    loss_fn: Callable | None
    micro_batches: list[MicroBatch]
    scale: float | None
    ignore_index: int
    overflow: bool  # the loss scaler skipped this step and the run of skipped steps persisted
    # A torch.compile'd model: what the compiled step itself gave (the replay runs the original module eagerly and
    # compares), else None.
    compiled: CompiledStep | None = None


@dataclass
class CompiledStep:
    """The bad step as the compiled model computed it: its mean loss (None when the watch saw none) and the norm of
    its gradients."""

    loss: float | None
    grad_norm: float


@dataclass
class EagerOutcome:
    """What the eager replay computed, micro-batch by micro-batch, to set beside a ``CompiledStep``."""

    losses: list[float] = field(default_factory=list)
    grads_nonfinite: bool = False


def loss_of(output) -> torch.Tensor | None:
    """The loss a model computed in its forward (Hugging Face style), or None.

    A scalar tensor; a dict (or ``ModelOutput``) with ``"loss"``; a tuple or list whose first element is a scalar
    tensor; an object with a ``.loss`` tensor.
    """
    if isinstance(output, dict):
        candidate = output.get("loss")
    elif isinstance(output, (tuple, list)):
        candidate = output[0] if output and isinstance(output[0], torch.Tensor) and output[0].dim() == 0 else None
    elif isinstance(output, torch.Tensor):
        candidate = output if output.dim() == 0 else None
    else:
        candidate = getattr(output, "loss", None)
    return candidate if isinstance(candidate, torch.Tensor) and candidate.is_floating_point() else None
