"""Masked attention: a softmax returned NaN from NaN-free scores, which only a row of -inf (every key masked) or
a +inf score can do: the softmax of finite scores is always finite, since it subtracts the row's maximum."""
from nanlab.causes.masked_attention import CAUSE
from nanlab.diagnosis import DIRECT, Verdict
from nanlab.watching.vocabulary import OpFamily, Phase

# softmax, log-softmax and the attention functions that hold a softmax inside, in every framework's spelling
SOFTMAX_FAMILIES = {OpFamily.SOFTMAX}


def diagnose(report) -> Verdict | None:
    if report.op_family in SOFTMAX_FAMILIES and report.value == "nan" and report.phase in (Phase.FORWARD, Phase.LOSS):
        return Verdict(CAUSE.id, DIRECT, f"`{report.op}` turned NaN-free scores into NaN, which a softmax does only "
                       "for a row whose every score is -inf (all keys masked): -inf - (-inf) = NaN",
                       ("op_family", "value", "phase"))
    return None
