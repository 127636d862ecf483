"""Evidence -> ranked verdicts -> the report's conclusion: the one place a watch's evidence meets the catalogue."""
from __future__ import annotations

from nanlab.report import NonFiniteReport


def conclude(report: NonFiniteReport) -> NonFiniteReport:
    """Fill the verdict (``cause``, ``cause_reason``, ``cause_notebook``, ``runner_up``) from the evidence."""
    from nanlab.diagnosis import diagnose

    return diagnose(report)
