"""The one state machine every framework's watch runs: count the steps, keep the history, and at a bad step
gather the evidence, conclude, and raise, stop or skip as the ``WatchPolicy`` says.

A framework's watch (``nanlab/frameworks/<name>/watch.py``) only measures: it reads its per-step status once, and
tells the core what it saw (``healthy``, ``scaler_skipped``, ``fault``). At a fault it hands the core two callables,
one that gathers the evidence (its replay fills a ``NonFiniteReport``) and one that drops the step's update; the
core concludes (``nanlab.watching.conclude``, the only caller of the diagnosis) and acts. So ``raise``, ``stop`` and
``skip`` mean the same in every framework, and nothing under ``frameworks/`` calls up into the catalogue.
"""
from __future__ import annotations

import logging
from typing import Callable, NoReturn

from nanlab.errors import NonFiniteError
from nanlab.report import NonFiniteReport
from nanlab.watching.policy import WatchHistory, WatchPolicy
from nanlab.watching.spikes import SpikeDetector
from nanlab.watching.vocabulary import Phase

LOG = logging.getLogger("nanlab.watch")


class WatchCore:
    """Step counter, history, last report and policy of one watch; the attributes every watch exposes.

    ``step`` counts the optimizer steps checked so far (from 0). ``history`` is a ``WatchHistory``. ``report`` is
    the last bad step's ``NonFiniteReport`` (or None). ``stopped`` is True once ``on_nonfinite="stop"`` ended
    training: the host loop breaks, Keras' ``fit`` ends through ``stop_training``.
    """

    def __init__(self, policy: WatchPolicy | None = None):
        self.policy = policy or WatchPolicy()
        self.step = 0
        self.history = WatchHistory()
        self.report: NonFiniteReport | None = None
        self.stopped = False
        self.skips_in_a_row = 0  # bad steps dropped by on_nonfinite="skip" with no healthy step between them
        threshold = self.policy.spike_threshold
        self._spikes = SpikeDetector(threshold) if threshold is not None else None

    def healthy(self, loss: float | None, grad_norm: float, loss_scale: float | None = None,
                learning_rate: float | None = None) -> None:
        """A finite step: record it (``loss`` None when the watch saw no loss, ``learning_rate`` None when it read
        no optimizer) and go on to the next."""
        if loss is not None:
            self.history.losses.append(loss)
        if learning_rate is not None:
            self.history.learning_rates.append(learning_rate)
        self.history.grad_norms.append(grad_norm)
        if loss_scale is not None:
            self.history.loss_scales.append(loss_scale)
        if self._spikes is not None:
            for spike in self._spikes.observe(self.step, {"loss": loss, "gradient norm": grad_norm}):
                self.history.spikes.append(spike)
                LOG.warning("nanlab.watch: %s; a NaN often follows such a jump", spike)
        self.skips_in_a_row = 0
        self.step += 1

    def _with_trajectory(self, report: NonFiniteReport) -> NonFiniteReport:
        """The approach to the failure beside the crossing: the loss scales, learning rates and spikes recorded
        before it."""
        report.loss_scales = list(self.history.loss_scales)
        report.learning_rates = list(self.history.learning_rates)
        report.spikes = [spike.to_dict() for spike in self.history.spikes]
        return report

    def scaler_skipped(self, loss_scale: float | None) -> bool:
        """The loss scaler skipped this step's update itself (scaled gradients overflowed): record it. Returns True
        when the skipping persists (``WatchPolicy.overflow_persists``): the caller then reports a ``fault`` with
        ``overflow=True``; otherwise the step is over."""
        self.history.skipped_steps.append(self.step)
        if loss_scale is not None:
            self.history.loss_scales.append(loss_scale)
        if self.policy.overflow_persists(self.history, self.step):
            return True
        self.step += 1
        return False

    def fault(self, gather: Callable[[], NonFiniteReport], drop_update: Callable[[], None]) -> NonFiniteReport:
        """A bad step: gather the evidence, conclude, then raise ``NonFiniteError``, stop or skip.

        ``gather`` returns the report of the step's evidence (its verdict is filled here). ``drop_update`` makes the
        host not apply this step's update (a no-op where it is already dropped, e.g. by the loss scaler). A step
        whose update already made a weight non-finite cannot be skipped, nor can a step after ``max_skips`` skipped
        steps in a row: those raise under ``skip`` too, with a note saying so. A stopped or skipped step is
        recorded in ``history.skipped_steps`` (its update did not happen).
        """
        from nanlab.watching.conclude import conclude

        report = conclude(self._with_trajectory(gather()))
        self.report = report
        policy = self.policy
        weights_spoiled = report.phase == Phase.OPTIMIZER
        gave_up = policy.on_nonfinite == "skip" and (weights_spoiled or self.skips_in_a_row >= policy.max_skips)
        if gave_up:
            report.note = " ".join(filter(None, [report.note, (
                "Gave up: a weight is already non-finite." if weights_spoiled else
                f"Gave up after {policy.max_skips} skipped steps in a row.")]))
        if policy.on_nonfinite == "raise" or gave_up:
            raise NonFiniteError(report)
        drop_update()
        if self.step not in self.history.skipped_steps:
            self.history.skipped_steps.append(self.step)
        if policy.on_nonfinite == "stop":
            self.stopped = True
        else:
            self.skips_in_a_row += 1
            LOG.warning("nanlab.watch skipped step %d: %s", self.step, report)
        self.step += 1
        return report

    def fault_at_end(self, gather: Callable[[], NonFiniteReport]) -> NoReturn:
        """A fault found once training is over (a weight left non-finite, seen as the watch detaches): nothing is
        left to drop or stop, so whatever ``on_nonfinite`` says, gather, conclude, keep the report and raise."""
        from nanlab.watching.conclude import conclude

        self.report = conclude(self._with_trajectory(gather()))
        raise NonFiniteError(self.report)


class WatchSurface:
    """The attributes every framework's watch shares, read from its ``core`` (a ``WatchCore``): ``step``,
    ``history``, ``report``, ``stopped`` and ``policy`` mean the same in every framework."""

    core: WatchCore

    @property
    def step(self) -> int:
        return self.core.step

    @property
    def history(self) -> WatchHistory:
        return self.core.history

    @property
    def report(self) -> NonFiniteReport | None:
        return self.core.report

    @property
    def stopped(self) -> bool:
        return self.core.stopped

    @property
    def policy(self) -> WatchPolicy:
        return self.core.policy
