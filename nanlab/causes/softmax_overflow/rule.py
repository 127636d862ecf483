"""Softmax overflow: ``exp`` turned finite inputs into inf (past log of the dtype's largest value: 88.72 in float32).

A half-precision ``exp`` (float16 overflows past 11.09) is left to the fp16-overflow rule, whose evidence (the
dtype's limit) is the more specific there. The same overflow hits any hand-written exp-based function (softmax,
logsumexp, softplus, sigmoid), so the reason names the remedy they share: shift by the largest input first.
"""
import math

from nanlab.causes.softmax_overflow import CAUSE
from nanlab.diagnosis import DIRECT, Verdict

EXP_OPS = {"exp"}  # torch.exp and TensorFlow's Exp op, lower-cased
HALF_PRECISION_MAX = 1e5  # float16 tops out at 65504; bfloat16 and float32 at ~3.4e38
FLOAT32_MAX = 3.4028234663852886e38


def diagnose(report) -> Verdict | None:
    if report.op_name not in EXP_OPS or report.value != "inf" or report.phase not in ("forward", "loss"):
        return None
    if report.dtype_max is not None and report.dtype_max < HALF_PRECISION_MAX:
        return None
    limit = math.log(report.dtype_max or FLOAT32_MAX)
    return Verdict(CAUSE.id, DIRECT,
                   f"`{report.op}` of finite inputs{_largest_input(report)} gave inf (exp overflows past {limit:.2f} "
                   f"in {report.dtype or 'float32'}); a hand-written softmax, logsumexp or softplus built on it "
                   "needs the largest input subtracted first", ("op", "value", "op_inputs", "phase", "dtype_max"))


def _largest_input(report) -> str:
    largest = [entry["max_abs"] for entry in report.op_inputs if entry.get("max_abs") is not None]
    return f" (up to {max(largest):.3g})" if largest else ""
