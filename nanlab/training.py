"""``Training``: everything one training run needs, the same shape in every framework.

Each framework's ``loop.py`` subclasses it with what only that framework has (PyTorch's ``max_grad_norm`` and
``scheduler``; Keras' compiled update). ``nanlab.watch(training)`` recognises it by this class.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator


@dataclass
class Training:
    """A cause's recipe builds one per setting: model, optimizer, loss, an endless batch iterator, an evaluator."""

    model: Any
    optimizer: Any
    loss_fn: Callable
    batches: Iterator
    evaluate: Callable[[Any], float]
