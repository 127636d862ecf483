"""``Training``: everything one training run needs, the same shape in every framework.

Each framework's ``loop.py`` subclasses it with what only that framework has (PyTorch's ``max_grad_norm`` and
``scheduler``; Keras' compiled update). ``nanlab.watch(training)`` recognises it by this class.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator


@dataclass
class Training:
    """A cause's recipe builds one per setting: model, optimizer, loss, an endless batch iterator, an evaluator."""

    model: Any
    optimizer: Any
    loss_fn: Callable
    batches: Iterator
    evaluate: Callable[[Any], float]
    watch: Any = field(default=None, init=False, repr=False, compare=False)  # the nanlab.watch attached (it sets it)

    def watch_decides(self, finite: bool) -> bool:
        """True when a non-finite step is the attached watch's to decide, so the loop must not stop on it: the watch
        raises, or drops the update and goes on (``on_nonfinite="skip"``), as a loop of one's own would. False
        without a watch, for a finite step, or once the watch has stopped training."""
        return self.watch is not None and not finite and not self.watch.stopped
