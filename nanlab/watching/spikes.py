"""The warning before the NaN: spikes in the values every watch already reads each step (loss, gradient norm).

Opt-in (``nanlab.watch(..., spike_threshold=6.0)``). A NaN rarely comes from nowhere: the loss or the gradient norm
usually jumps first (an overshooting update, a bad batch, attention logits running away), and a run that survives
such a jump often goes non-finite a few hundred steps later. So each healthy step's loss and gradient norm are
compared with the running statistics of the steps before it, as OLMo's skip-step optimizer and Lightning's
``SpikeDetection`` callback do: a value more than ``threshold`` standard deviations above the mean of the last
``window`` steps is a spike, logged as a warning on the ``nanlab.watch`` logger and kept in ``history.spikes``.

The statistics are taken over the logarithms of the values (gradient norms and losses vary over orders of
magnitude and are closer to log-normal than normal), over a sliding window so that a run whose scale drifts is not
flagged for drifting; no spike is called before ``warmup`` steps. The cost is a few float operations per step on
values the watch has already read back: no extra host synchronisation, nothing on the device.

Thresholds: a z-score of 6 flags roughly one healthy step in 10^9 if the log-values were normal; real training
curves have heavier tails, so expect an occasional warning on a healthy run (Lightning's default relative
tolerance and OLMo's z of 6 make the same trade). Lower it to hear earlier, at the price of more false warnings.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

WINDOW = 50  # the steps a value is compared with
WARMUP = 10  # no spike is called before this many healthy steps (the first steps of training move fast)
MIN_SPREAD = 0.01  # a window flat to the last digit still counts a 1% wobble as normal (log scale)


@dataclass(frozen=True)
class Spike:
    """One value that jumped: which (``"loss"`` or ``"gradient norm"``), at which step, and against what."""

    step: int
    signal: str
    value: float
    mean: float  # the geometric mean of the window (exp of the mean log)
    z: float  # standard deviations of the log-values above the window's mean

    def __str__(self) -> str:
        return (f"step {self.step}: the {self.signal} {self.value:.3g} is {self.z:.1f} standard deviations above "
                f"its running level ({self.mean:.3g} over the last steps, in log scale)")

    def to_dict(self) -> dict:
        return {"step": self.step, "signal": self.signal, "value": self.value, "mean": self.mean, "z": self.z}


class SpikeDetector:
    """Running log-space statistics of each signal over the last ``window`` healthy steps; ``observe`` says which
    values of a new step are spikes. A spike still joins the window, so a new level becomes the norm."""

    def __init__(self, threshold: float, window: int = WINDOW, warmup: int = WARMUP):
        self.threshold, self.window, self.warmup = threshold, window, warmup
        self._values: dict[str, deque[float]] = {}

    def observe(self, step: int, values: dict[str, float | None]) -> list[Spike]:
        spikes = []
        for signal, value in values.items():
            if value is None or not value > 0 or not math.isfinite(value):
                continue  # a zero gradient norm (nothing trained) has no log; a non-finite value is the watch's job
            history = self._values.setdefault(signal, deque(maxlen=self.window))
            logged = math.log(value)
            if len(history) >= self.warmup:
                mean = sum(history) / len(history)
                spread = math.sqrt(sum((x - mean) ** 2 for x in history) / (len(history) - 1))
                z = (logged - mean) / max(spread, MIN_SPREAD)
                if z > self.threshold:
                    spikes.append(Spike(step, signal, value, math.exp(mean), z))
            history.append(logged)
        return spikes
