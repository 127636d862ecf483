"""float8 range: an op whose result is a float8 format went non-finite from finite inputs past (or at the edge of)
that format's range.

Reads ``report.dtype`` (the canonical float8 names, ``float8_e5m2`` and ``float8_e4m3fn``, in every framework) and
its limit (``range_limit``). e5m2 has inf: a cast of a value past 57344 gives inf. e4m3fn has none: where a cast
does not saturate (TensorFlow's), a value past 448 gives NaN. fp16-overflow reads float16 only, so a float8 overflow
is this rule's alone; a NaN from a float8 op whose inputs were already non-finite is left to whatever made them so.
"""
from nanlab.causes.float8_range import CAUSE
from nanlab.diagnosis import DIRECT, Verdict, overflowed, range_limit
from nanlab.watching.vocabulary import SATURATING, Phase

FLOAT8 = ("float8_e5m2", "float8_e4m3fn")
SPECIFIC = 0.05  # the dtype is a float8 format and the inputs were past its range: nothing else fits that


def diagnose(report) -> Verdict | None:
    if report.dtype not in FLOAT8 or report.phase not in (Phase.FORWARD, Phase.LOSS, Phase.BACKWARD):
        return None
    if any(entry.nonfinite for entry in report.op_inputs):
        return None
    limit = range_limit(report)
    largest = max((entry.max_abs for entry in report.op_inputs if entry.max_abs is not None), default=None)
    past = largest is not None and limit is not None and largest > limit
    if not (past or overflowed(report) or report.value in ("inf", "-inf")):
        return None
    where = f"`{report.op}`" if report.op else "an op"
    values = f"values up to {largest:.4g}" if largest is not None else "finite values"
    became = ("NaN (it has no inf and this cast does not saturate)" if report.dtype in SATURATING
              else report.value or "inf")
    return Verdict(CAUSE.id, DIRECT + SPECIFIC, f"{where} put {values} into {report.dtype}, whose largest finite "
                   f"value is {limit:.6g}: they became {became}; scale each tensor into the format before the cast "
                   "(scale = fp8_max / amax) and divide the result by the scale", ("dtype", "op_inputs", "value"))
