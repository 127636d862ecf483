"""Square root at zero: the forward pass was finite and the backward pass of a square root was the first to go
non-finite (its derivative 1 / (2 sqrt(0)) = inf, times the zero derivative of its input).

A square root in the backward pass is any op of the sqrt, statistic (std: the root of a variance) or norm (the root
of a sum of squares) family: each framework maps its own names (a forward op whose gradient failed, or a gradient op
such as TensorFlow's) onto these families. A fractional power is a root too: ``x ** p`` with ``0 < p < 1`` (``x **
0.5``, a focal loss's ``(1 - p) ** gamma`` with gamma < 1) is finite at 0 and its derivative ``p * x ** (p - 1)`` is
not. The rule does not know the exponent; it reads the power's input statistics (an exact 0 among them, recorded
for backward culprits from the forward op's inputs): no integer power >= 1 has an infinite derivative at 0, and a
negative one would have failed in the forward pass already.

The root's other edge is in the forward pass: a (reciprocal) square root of a number below 0 is NaN, which a
variance written as a difference (``E[x**2] - E[x]**2``) reaches by rounding when the values do not vary.
"""
from nanlab.causes.sqrt_at_zero import CAUSE
from nanlab.diagnosis import DIRECT, Verdict, below_domain
from nanlab.watching.vocabulary import OpFamily, Phase

ROOT_FAMILIES = {OpFamily.SQRT, OpFamily.STATISTIC, OpFamily.NORM}
POWER_FAMILIES = {OpFamily.POW}
FORWARD_ROOT_FAMILIES = {OpFamily.SQRT, OpFamily.RSQRT}


def diagnose(report) -> Verdict | None:
    if report.phase in (Phase.FORWARD, Phase.LOSS) and report.op_family in FORWARD_ROOT_FAMILIES \
            and report.value == "nan" and below_domain(report):
        return Verdict(CAUSE.id, DIRECT, f"`{report.op}` got an input below its domain (the square root of a "
                       "negative number is NaN): a variance computed as E[x**2] - E[x]**2 rounds below 0 when the "
                       "values do not vary", ("phase", "op_family", "op_inputs", "value"))
    if report.phase != Phase.BACKWARD:
        return None
    if report.op_family in ROOT_FAMILIES:
        return Verdict(CAUSE.id, DIRECT, f"the forward pass was finite and the backward pass of `{report.op}` was "
                       "the first to go non-finite: the derivative of sqrt at 0 is inf, and inf * 0 = NaN",
                       ("phase", "op_family", "value"))
    if report.op_family in POWER_FAMILIES and report.zero_input:
        return Verdict(CAUSE.id, DIRECT, f"the forward pass was finite and the backward pass of `{report.op}` was "
                       "the first to go non-finite at an exact 0 in its input: a fractional power x ** p (0 < p < 1, "
                       "a root) has the derivative p * x ** (p - 1) = inf at 0, and inf * 0 = NaN",
                       ("phase", "op_family", "op_inputs", "value"))
    return None
