"""The framework-neutral bookkeeping of an LR range test (Smith, 2017, "Cyclical Learning Rates")."""
from __future__ import annotations

import math
from typing import Iterator


class RangeTestTracker:
    """Exponentially spaced rates from ``lr_min`` to ``lr_max`` and a smoothed loss per rate.

    The test stops when the loss goes non-finite or exceeds ``blow_up`` times its best smoothed value; the
    suggestion is a tenth of the rate at the smoothed minimum.
    """

    def __init__(self, lr_min: float, lr_max: float, steps: int, smoothing: float = 0.7, blow_up: float = 4.0):
        self.lr_min, self.lr_max, self.steps = lr_min, lr_max, steps
        self.smoothing, self.blow_up = smoothing, blow_up
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self._average = 0.0
        self._best = (math.inf, lr_min)

    def rates(self) -> Iterator[float]:
        for step in range(self.steps):
            lr = self.lr_min * (self.lr_max / self.lr_min) ** (step / (self.steps - 1))
            self.lrs.append(lr)
            yield lr

    def record(self, loss: float) -> bool:
        """Record the loss at the current rate; False means stop (non-finite or blown up)."""
        self.losses.append(loss)
        if not math.isfinite(loss):
            return False
        self._average = self.smoothing * self._average + (1 - self.smoothing) * loss
        smoothed = self._average / (1 - self.smoothing ** len(self.losses))
        best_loss, _ = self._best
        if smoothed > self.blow_up * best_loss:
            return False
        if smoothed < best_loss:
            self._best = (smoothed, self.lrs[-1])
        return True

    def suggestion(self) -> float:
        return self._best[1] / 10
