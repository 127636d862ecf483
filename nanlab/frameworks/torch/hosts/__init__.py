"""Adapters of the torch watch to trainers built on torch (a ``Host`` each in ``nanlab.frameworks.torch``)."""
from nanlab.report import NonFiniteReport
from nanlab.watching import WatchHistory


class HostSurface:
    """``step``, ``history``, ``report`` and ``stopped`` of a host adapter, read from the torch watch it makes when
    training begins (``self.watch``, None before): the same attributes as every watch's."""

    watch = None

    @property
    def step(self) -> int:
        return self.watch.step if self.watch is not None else 0

    @property
    def history(self) -> WatchHistory:
        return self.watch.history if self.watch is not None else WatchHistory()

    @property
    def report(self) -> NonFiniteReport | None:
        return self.watch.report if self.watch is not None else None

    @property
    def stopped(self) -> bool:
        return self.watch is not None and self.watch.stopped
