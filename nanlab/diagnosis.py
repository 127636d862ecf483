"""Which catalogue cause the evidence points to: every cause's rule is asked, the most specific verdict wins.

A cause package may hold ``rule.py`` with ``diagnose(report) -> Verdict | None``: it reads the framework-neutral
evidence a watch gathered in a ``NonFiniteReport`` and, when the evidence fits its cause, returns a ``Verdict``
saying how specific that evidence is and which fields it used. Rules read only the shared vocabulary
(``nanlab.watching.vocabulary``): the phase (``Phase``), the failing op's family (``report.op_family``, an
``OpFamily``; ``report.op`` is the framework's own name, for the reason's text only), its inputs (``InputStats``),
the optimizer (``OptimizerFacts``), the dtype and its limit (``dtype_max``), the history and the data findings; no
rule names a framework's spelling (``tests/test_rules_vocabulary.py`` keeps it so). Verdicts are ranked by
specificity, never by file order; when the runner-up is within ``CLOSE`` of the best, the report says the evidence
is consistent with both. ``nanlab.watching.conclude`` is the only caller.
"""
from __future__ import annotations

from dataclasses import dataclass

from nanlab.watching.vocabulary import DTYPE_MAX, OpFamily, dtype_max

# How specific the evidence behind a verdict is. A rule picks the level that matches what it read; ties are rare
# and honest (the report then names both causes).
DIRECT = 0.9    # the data or the failing op itself shows the cause: a label out of range, log(0), x/0
LOCATED = 0.7   # where it failed fits the cause: inside a recurrent layer, an fp16 op past the dtype's range
TREND = 0.4     # only the history fits: the gradient norm grew by orders of magnitude before the NaN
CLOSE = 0.15    # a runner-up within this of the best verdict is reported alongside it

# float16's largest finite value: a dtype whose range ends there or sooner (float16, the float8 formats) overflows
# on values a float32 or bfloat16 run holds, so its overflow is the fp16-overflow rule's evidence, not a trend's.
NARROW_RANGE_MAX = DTYPE_MAX["float16"]
# Families defined only from a floor up: the log and the square root of a number below 0 are NaN. (log1p's own floor
# is -1, but the family cannot tell it from log: a NaN out of either means its argument was negative.)
DOMAIN_FLOOR = {OpFamily.LOG: 0.0, OpFamily.PROBABILITY_LOSS: 0.0, OpFamily.SQRT: 0.0, OpFamily.RSQRT: 0.0}


@dataclass(frozen=True)
class Verdict:
    """One rule's answer: its cause id, how specific its evidence is (0..1), the reason in words, the fields read.

    ``reason`` completes the sentence "Likely cause: <cause>, because <reason>."
    """

    cause: str
    specificity: float
    reason: str
    evidence: tuple[str, ...] = ()


def range_limit(report) -> float | None:
    """The largest finite value of the dtype the failing op computed in (``report.dtype_max``, else the dtype's
    limit from the vocabulary), or None where no dtype was recorded."""
    return report.dtype_max if report.dtype_max is not None else dtype_max(report.dtype)


def narrow_range(report) -> bool:
    """The failing op computed in a dtype whose range is float16's or narrower (float16, float8): what overflows
    there is left to the rules that read the dtype's limit. bfloat16 keeps float32's range, so it is not narrow."""
    limit = range_limit(report)
    return limit is not None and limit <= NARROW_RANGE_MAX


def overflowed(report) -> bool:
    """The failing op's own result, recomputed in a wider dtype, passed its dtype's limit (``report.max_abs``): an
    overflow (a square or a quotient too large to hold), which a zero elsewhere among its inputs did not cause."""
    limit = range_limit(report)
    return report.max_abs is not None and limit is not None and report.max_abs > limit


def below_domain(report) -> bool:
    """The failing op belongs to a family defined only from a floor up (``DOMAIN_FLOOR``: log, sqrt) and one of its
    inputs held a finite value below that floor (its statistics: a negative count, or its minimum)."""
    floor = DOMAIN_FLOOR.get(report.op_family)
    return floor is not None and any(entry.negatives or (entry.min is not None and entry.min < floor)
                                     for entry in report.op_inputs)


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
