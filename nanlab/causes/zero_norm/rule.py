"""Zero norm: the inverse of a norm (rsqrt of a sum of squares, or a norm op) got an all-zero input."""
from nanlab.causes.zero_norm import CAUSE
from nanlab.diagnosis import DIRECT, Verdict

# Ops that take the (inverse) length of a vector, lower-cased torch function names and TensorFlow op types.
NORM_OPS = {"rsqrt", "norm", "linalg_vector_norm", "normalize", "euclideannorm"}
# More specific than a bare division by zero: the zero is a vector's length.
SPECIFIC = 0.03


def diagnose(report) -> Verdict | None:
    if report.op_name in NORM_OPS and report.phase in ("forward", "loss") and report.zero_input:
        return Verdict(CAUSE.id, DIRECT + SPECIFIC, f"`{report.op}` took the inverse length of a vector that is all "
                       "zeros (1 / 0 = inf, and 0 * inf = NaN)", ("op", "op_inputs", "value", "phase"))
    return None
