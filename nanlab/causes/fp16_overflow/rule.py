"""fp16 overflow: an op computing in float16 produced a magnitude past float16's largest finite value (65504), or
the loss scaler kept skipping steps until its scale collapsed.

Reads the canonical dtype name (``report.dtype``: "float16" in every framework, whatever it calls the policy) and
its limit (``report.dtype_max``, else the vocabulary's ``dtype_max``)."""
import math

from nanlab.causes.fp16_overflow import CAUSE
from nanlab.diagnosis import DIRECT, LOCATED, Verdict, range_limit
from nanlab.watching.vocabulary import Phase

FLOAT16 = "float16"


def diagnose(report) -> Verdict | None:
    if report.dtype != FLOAT16 or report.phase not in (Phase.FORWARD, Phase.LOSS, Phase.BACKWARD):
        return None
    limit = range_limit(report)
    where = f"`{report.op}`" if report.op else "an op"
    if report.max_abs is not None and report.max_abs > limit:
        return Verdict(CAUSE.id, DIRECT, f"{where} computed in float16 reached |x| = {report.max_abs:.3g}, past "
                       f"float16's largest finite value {limit:.6g}", ("dtype", "dtype_max", "max_abs", "op"))
    if report.value in ("inf", "-inf"):
        return Verdict(CAUSE.id, DIRECT, f"{where} computed in float16 overflowed to {report.value} (float16 "
                       f"stops at {limit:.6g})", ("dtype", "value", "op"))
    if report.skipped_in_a_row > 1:
        scale = f", and the loss scale fell to {report.loss_scale:.3g}" if report.loss_scale is not None else ""
        return Verdict(CAUSE.id, LOCATED, f"the loss scaler skipped {report.skipped_in_a_row} float16 steps in a "
                       f"row{scale}: the overflow does not depend on the scale", ("dtype", "skipped_in_a_row",
                                                                                 "loss_scale"))
    # A NaN (e.g. inf - inf inside a matmul) from finite inputs so large that one product of two passes the limit.
    if report.phase in (Phase.FORWARD, Phase.LOSS) and report.value and (report.max_abs or 0.0) >= math.sqrt(limit):
        return Verdict(CAUSE.id, LOCATED, f"{where} computed in float16 gave {report.value} amid magnitudes up to "
                       f"{report.max_abs:.3g}; float16 stops at {limit:.6g}, so a product or a sum of such values "
                       "overflows", ("dtype", "value", "max_abs", "op"))
    return None
