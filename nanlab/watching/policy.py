"""What every watch shares: its history, what to do on a NaN, and when loss-scaler skips turn into a fault.

Framework-neutral: the PyTorch and Keras watches (``nanlab/frameworks/*/watch.py``) keep one ``WatchHistory`` and
follow one ``WatchPolicy``, so their attributes and meanings are the same (``watch.step``, ``watch.history``,
``watch.report``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from nanlab.errors import NanlabError

ON_NONFINITE = ("raise", "stop", "skip")


@dataclass
class WatchHistory:
    """One entry per optimizer step the watch checked, in the loss's own (unscaled) units.

    ``losses`` and ``grad_norms`` hold the healthy steps' values. ``skipped_steps`` are the steps whose update did
    not happen: the loss scaler skipped an overflowing fp16 step (expected now and then), or ``on_nonfinite="skip"``
    dropped it. ``loss_scales`` is the loss scale after each step (empty without mixed precision).
    ``learning_rates`` is the learning rate each healthy step ran with (its schedule's value at that step; the first
    parameter group's in torch), read where the watch reads the optimizer anyway: a schedule's trajectory.
    """

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)
    loss_scales: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    spikes: list = field(default_factory=list)  # nanlab.watching.spikes.Spike, with spike_threshold set

    def skipped_in_a_row(self, step: int) -> int:
        """How many steps up to and including ``step`` were skipped without a healthy step between them."""
        count = 0
        skipped = set(self.skipped_steps)
        while step - count in skipped:
            count += 1
        return count

    def to_dict(self) -> dict:
        def plain(value):
            if hasattr(value, "to_dict"):
                return value.to_dict()
            return value if not isinstance(value, float) or math.isfinite(value) else str(value)
        return {name: [plain(value) for value in getattr(self, name)] for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class WatchPolicy:
    """What a watch does at a non-finite step, and how much loss-scaler skipping it tolerates.

    ``on_nonfinite``:
      - ``"raise"`` (default): replay the step, raise ``NonFiniteError`` with the report;
      - ``"stop"``: replay, keep the report in ``watch.report`` and end training cleanly (Keras: ``stop_training``,
        so ``on_train_end`` callbacks such as checkpoints and ``BackupAndRestore`` still run; PyTorch: the watch
        stops raising and ``watch.stopped`` tells the loop to break);
      - ``"skip"``: replay, log the report, drop that update and go on; after ``max_skips`` non-finite steps in a row
        it raises. A last resort: the data or the setting that made the NaN is still there, and skipped updates
        silently shrink the training set.
    Mixed precision: a step the loss scaler skips because the scaled gradients overflowed is expected and recorded
    in ``history.skipped_steps``. It becomes a fault (``NonFiniteError`` naming fp16 overflow) once
    ``overflow_patience`` steps in a row were skipped, or the loss scale falls below ``min_loss_scale``.
    The warning before the NaN (opt-in): with ``spike_threshold`` set (a z-score, e.g. 6.0), a healthy step whose
    loss or gradient norm jumps that many standard deviations above its recent level is logged as a warning and
    kept in ``history.spikes`` (``nanlab.watching.spikes``); training is not changed.
    """

    on_nonfinite: str = "raise"
    max_skips: int = 5
    overflow_patience: int = 10
    min_loss_scale: float = 1.0
    spike_threshold: float | None = None

    def __post_init__(self):
        if self.on_nonfinite not in ON_NONFINITE:
            raise NanlabError(f"unknown on_nonfinite {self.on_nonfinite!r}; valid: {', '.join(ON_NONFINITE)}")
        for name in ("max_skips", "overflow_patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise NanlabError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.min_loss_scale, (int, float)) and self.min_loss_scale > 0):
            raise NanlabError(f"min_loss_scale must be a positive number, got {self.min_loss_scale!r}")
        if self.spike_threshold is not None and not (isinstance(self.spike_threshold, (int, float))
                                                     and not isinstance(self.spike_threshold, bool)
                                                     and self.spike_threshold > 0):
            raise NanlabError(f"spike_threshold must be a positive number (a z-score, e.g. 6.0) or None, got "
                              f"{self.spike_threshold!r}")

    def overflow_persists(self, history: WatchHistory, step: int) -> bool:
        """True when the loss scaler's skipping at ``step`` is no longer the occasional expected overflow."""
        scale_collapsed = bool(history.loss_scales) and history.loss_scales[-1] < self.min_loss_scale
        return history.skipped_in_a_row(step) >= self.overflow_patience or scale_collapsed
