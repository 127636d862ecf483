"""Square root at zero: the forward pass was finite and the backward pass of a square root was the first to go
non-finite (its derivative 1 / (2 sqrt(0)) = inf, times the zero derivative of its input).

A square root in the backward pass is any op of the sqrt, statistic (std: the root of a variance) or norm (the root
of a sum of squares) family: each framework maps its own names (a forward op whose gradient failed, or a gradient op
such as TensorFlow's) onto these families.
"""
from nanlab.causes.sqrt_at_zero import CAUSE
from nanlab.diagnosis import DIRECT, Verdict
from nanlab.watching.vocabulary import OpFamily, Phase

ROOT_FAMILIES = {OpFamily.SQRT, OpFamily.STATISTIC, OpFamily.NORM}


def diagnose(report) -> Verdict | None:
    if report.phase == Phase.BACKWARD and report.op_family in ROOT_FAMILIES:
        return Verdict(CAUSE.id, DIRECT, f"the forward pass was finite and the backward pass of `{report.op}` was "
                       "the first to go non-finite: the derivative of sqrt at 0 is inf, and inf * 0 = NaN",
                       ("phase", "op_family", "value"))
    return None
