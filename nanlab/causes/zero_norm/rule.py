"""Zero norm: the inverse of a norm (rsqrt of a sum of squares, or a norm op) got an all-zero input."""
from nanlab.causes.zero_norm import CAUSE
from nanlab.diagnosis import DIRECT, Verdict, overflowed
from nanlab.watching.vocabulary import OpFamily, Phase

# Ops that take the (inverse) length of a vector: rsqrt of a sum of squares, a norm, a normalisation to unit length.
NORM_FAMILIES = {OpFamily.RSQRT, OpFamily.NORM}
# More specific than a bare division by zero: the zero is a vector's length.
SPECIFIC = 0.03


def diagnose(report) -> Verdict | None:
    if report.op_family in NORM_FAMILIES and report.phase in (Phase.FORWARD, Phase.LOSS) and report.zero_input \
            and not overflowed(report):  # a sum of squares past the dtype's range is an overflow, not a zero
        return Verdict(CAUSE.id, DIRECT + SPECIFIC, f"`{report.op}` took the inverse length of a vector that is all "
                       "zeros (1 / 0 = inf, and 0 * inf = NaN)", ("op_family", "op_inputs", "value", "phase"))
    return None
