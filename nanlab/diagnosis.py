"""Which catalogue cause the evidence points to: every cause's rule is asked, the most specific verdict wins.

A cause package may hold ``rule.py`` with ``diagnose(report) -> Verdict | None``: it reads the framework-neutral
evidence a watch gathered in a ``NonFiniteReport`` (phase, op, module kind, dtype, history, data findings, optimizer
and loss-scaler facts) and, when the evidence fits its cause, returns a ``Verdict`` saying how specific that
evidence is and which fields it used. Verdicts are ranked by specificity, never by file order; when the runner-up
is within ``CLOSE`` of the best, the report says the evidence is consistent with both.
"""
from __future__ import annotations

from dataclasses import dataclass

# How specific the evidence behind a verdict is. A rule picks the level that matches what it read; ties are rare
# and honest (the report then names both causes).
DIRECT = 0.9    # the data or the failing op itself shows the cause: a label out of range, log(0), x/0
LOCATED = 0.7   # where it failed fits the cause: inside a recurrent layer, an fp16 op past the dtype's range
TREND = 0.4     # only the history fits: the gradient norm grew by orders of magnitude before the NaN
CLOSE = 0.15    # a runner-up within this of the best verdict is reported alongside it


@dataclass(frozen=True)
class Verdict:
    """One rule's answer: its cause id, how specific its evidence is (0..1), the reason in words, the fields read.

    ``reason`` completes the sentence "Likely cause: <cause>, because <reason>."
    """

    cause: str
    specificity: float
    reason: str
    evidence: tuple[str, ...] = ()


def rank(report) -> list[Verdict]:
    """Every verdict the catalogue's rules give on ``report``, most specific first (ties in catalogue order)."""
    from nanlab.registry import list_causes

    verdicts = []
    for position, cause in enumerate(list_causes()):
        rule = cause.rule
        verdict = rule(report) if rule is not None else None
        if verdict is not None:
            verdicts.append((-verdict.specificity, position, verdict))
    return [verdict for *_, verdict in sorted(verdicts, key=lambda item: item[:2])]


def diagnose(report):
    """Fill the report's verdict: ``cause``, ``cause_reason``, ``cause_notebook``, ``runner_up`` and its reason."""
    from nanlab.registry import get_cause

    verdicts = rank(report)
    report.verdicts = [verdict.cause for verdict in verdicts]
    if not verdicts:
        report.cause, report.cause_reason = None, report.unclear_reason()
        return report
    best = verdicts[0]
    report.cause, report.cause_reason = best.cause, best.reason
    cause = get_cause(best.cause)
    report.cause_notebook = cause.notebooks.get(report.framework)
    close = [verdict for verdict in verdicts[1:] if best.specificity - verdict.specificity <= CLOSE]
    if close:
        report.runner_up, report.runner_up_reason = close[0].cause, close[0].reason
    return report
