"""Softmax overflow: ``exp`` turned finite inputs into inf (past log of the dtype's largest value: 88.72 in float32).

A ``exp`` in a narrow dtype (float16 overflows past 11.09) is left to the fp16-overflow rule, whose evidence (the
dtype's limit) is the more specific there. The same overflow hits any hand-written exp-based function (softmax,
logsumexp, softplus, sigmoid), so the reason names the remedy they share: shift by the largest input first.
"""
import math

from nanlab.causes.softmax_overflow import CAUSE
from nanlab.diagnosis import DIRECT, Verdict, narrow_range, range_limit
from nanlab.watching.vocabulary import DTYPE_MAX, OpFamily, Phase

EXP_FAMILIES = {OpFamily.EXP}
DEFAULT_DTYPE = "float32"  # what an op computes in when the watch recorded no dtype


def diagnose(report) -> Verdict | None:
    if report.op_family not in EXP_FAMILIES or report.value != "inf" or report.phase not in (Phase.FORWARD,
                                                                                              Phase.LOSS):
        return None
    if narrow_range(report):
        return None
    limit = math.log(range_limit(report) or DTYPE_MAX[DEFAULT_DTYPE])
    return Verdict(CAUSE.id, DIRECT,
                   f"`{report.op}` of finite inputs{_largest_input(report)} gave inf (exp overflows past {limit:.2f} "
                   f"in {report.dtype or DEFAULT_DTYPE}); a hand-written softmax, logsumexp or softplus built on it "
                   "needs the largest input subtracted first", ("op_family", "value", "op_inputs", "phase",
                                                                "dtype_max"))


def _largest_input(report) -> str:
    largest = [entry.max_abs for entry in report.op_inputs if entry.max_abs is not None]
    return f" (up to {max(largest):.3g})" if largest else ""
