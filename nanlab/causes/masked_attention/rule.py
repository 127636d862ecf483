"""Masked attention: a softmax returned NaN from NaN-free scores, which only a row of -inf (every key masked) or
a +inf score can do: the softmax of finite scores is always finite, since it subtracts the row's maximum.

The same mask bites outside attention, wherever a deliberate fill (-inf, finfo.min) meets a group that is all
masked. The replay follows the fill (``report.filled_from`` names the op that wrote it) to the op that made it a
non-finite value: a reduction (a max, a max-pool, a logsumexp) over a group whose every value was the fill (a
document whose tokens are all masked) returns the fill itself, -inf, which the next op turns into NaN (x - max,
a matmul's -inf * w summed with +inf * w'); an op that turns the fill into NaN or inf by itself (-inf - (-inf),
0 * inf, finfo.min + finfo.min overflowing to -inf) is named at the located level, since the fill explains the value
but not why the mask met it there.
"""
from nanlab.causes.masked_attention import CAUSE
from nanlab.diagnosis import DIRECT, LOCATED, Verdict
from nanlab.watching.vocabulary import OpFamily, Phase

# softmax, log-softmax and the attention functions that hold a softmax inside, in every framework's spelling
SOFTMAX_FAMILIES = {OpFamily.SOFTMAX}
# reductions and pools: their result over a group that is all fill is the fill itself
REDUCING_FAMILIES = {OpFamily.REDUCE}
FORWARD = (Phase.FORWARD, Phase.LOSS)


def diagnose(report) -> Verdict | None:
    if report.phase not in FORWARD:
        return None
    if report.op_family in SOFTMAX_FAMILIES and report.value == "nan":
        return Verdict(CAUSE.id, DIRECT, f"`{report.op}` turned NaN-free scores into NaN, which a softmax does only "
                       "for a row whose every score is -inf (all keys masked): -inf - (-inf) = NaN",
                       ("op_family", "value", "phase"))
    filled_from = report.filled_from
    if filled_from is None or report.value is None:
        return None
    if report.op_family in REDUCING_FAMILIES and report.value in ("-inf", "inf"):
        return Verdict(CAUSE.id, DIRECT, f"`{report.op}` reduced a group whose every value was the {report.value} "
                       f"fill written by {filled_from} (every position masked: an empty document or row), so its "
                       "result is the fill itself, no longer a mask but a value the next op turns into NaN "
                       "(-inf - (-inf), -inf * w + inf * w'); give such a group a finite result (zeros where nothing "
                       "is left) or drop it", ("op_family", "value", "phase", "filled_from"))
    how = ("-inf - (-inf) and 0 * inf are NaN: a row or group masked whole" if report.value == "nan" else
           "finfo.min + finfo.min overflows to -inf: two masks added together; combine the masks before one fill")
    return Verdict(CAUSE.id, LOCATED, f"`{report.op}` turned the fill written by {filled_from} (a mask's -inf or "
                   f"finfo.min) into {report.value}: a masked value used as a number ({how})",
                   ("op_family", "value", "phase", "filled_from"))
