"""Domain edge: an inverse-trigonometric op got an input outside [-1, 1] (its forward value is NaN) or on its edge
(+-1: the value is finite, or +-inf for atanh, and the derivative is infinite).

``acos`` and ``asin`` are defined on [-1, 1], ``atanh`` on (-1, 1); their derivatives -+1 / sqrt(1 - x**2) and
1 / (1 - x**2) are infinite at +-1. The rule reads the failing op's family (``OpFamily.INVERSE_TRIG``) and the
largest finite magnitude among its inputs (``InputStats.max_abs``; for a backward culprit, the forward op's inputs):
above 1 with a forward NaN, exactly 1 with a forward inf (atanh) or with a backward culprit. The family also holds
``atan`` and ``asinh`` (finite everywhere, never the culprit) and ``acosh``, whose domain starts at 1: the family
cannot tell it from ``acos``, and an ``acosh`` of inputs below 1 whose magnitudes stay within 1 is not named.

Not this rule's: ``log1p`` at -1 (the log family: a log of 0, log-of-zero's), and a cosine's ``sqrt(1 - cos**2)`` at
0 (the acos-free margin without its clamp: the square root's derivative at 0, sqrt-at-zero's).
"""
from nanlab.causes.domain_edge import CAUSE
from nanlab.diagnosis import DIRECT, Verdict
from nanlab.watching.vocabulary import OpFamily, Phase

EDGE_FAMILIES = {OpFamily.INVERSE_TRIG}
EDGE = 1.0  # where acos, asin and atanh stop: their inputs' magnitude


def diagnose(report) -> Verdict | None:
    if report.op_family not in EDGE_FAMILIES:
        return None
    largest = _largest_input(report)
    if largest is None:
        return None
    forward = report.phase in (Phase.FORWARD, Phase.LOSS)
    if forward and report.value == "nan" and largest > EDGE:
        return Verdict(CAUSE.id, DIRECT, f"`{report.op}` got an input outside its domain [-1, 1] (|x| up to "
                       f"{largest!r}): a cosine computed from nearly parallel unit vectors rounds an ulp past 1, and "
                       "acos / asin of it is NaN; clamp it to [-1 + eps, 1 - eps] first",
                       ("phase", "op_family", "op_inputs", "value"))
    if forward and report.value in ("inf", "-inf") and largest == EDGE:
        return Verdict(CAUSE.id, DIRECT, f"`{report.op}` got an input of exactly +-1, the edge of its domain, "
                       "where atanh is infinite; clamp it to [-1 + eps, 1 - eps] first",
                       ("phase", "op_family", "op_inputs", "value"))
    if report.phase == Phase.BACKWARD and largest == EDGE:
        return Verdict(CAUSE.id, DIRECT, f"the forward pass was finite and the backward pass of `{report.op}` was "
                       "the first to go non-finite at an input of exactly +-1, the edge of its domain: the "
                       "derivative of acos there is -1 / sqrt(1 - 1) = -inf (clamping to exactly [-1, 1] keeps it); "
                       "clamp to [-1 + eps, 1 - eps] or write the margin without acos",
                       ("phase", "op_family", "op_inputs", "value"))
    return None


def _largest_input(report) -> float | None:
    largest = [entry.max_abs for entry in report.op_inputs if entry.max_abs is not None]
    return max(largest) if largest else None
