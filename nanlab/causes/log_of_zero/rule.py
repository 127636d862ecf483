"""log of zero: a log-family op got an exact 0 (a probability that underflowed), or its backward divided by it; or
its forward made NaN from finite inputs, which for log means a negative input (a rate or variance gone below 0)."""
from nanlab.causes.log_of_zero import CAUSE
from nanlab.diagnosis import DIRECT, Verdict, below_domain
from nanlab.watching.vocabulary import OpFamily, Phase

# Ops whose value is -inf at 0: log and its kin (log2, log10, log1p, xlogy), and the log losses on probabilities.
LOG_FAMILIES = {OpFamily.LOG, OpFamily.PROBABILITY_LOSS}


def diagnose(report) -> Verdict | None:
    if report.op_family not in LOG_FAMILIES or report.phase not in (Phase.FORWARD, Phase.LOSS, Phase.BACKWARD):
        return None
    if report.zero_input or report.value == "-inf" or report.phase == Phase.BACKWARD:
        return Verdict(CAUSE.id, DIRECT, f"`{report.op}` got an exact 0 (a probability that underflowed)",
                       ("op_family", "op_inputs", "value", "phase"))
    if below_domain(report) or report.value == "nan":  # NaN from finite inputs: only below the domain
        return Verdict(CAUSE.id, DIRECT, f"`{report.op}` got an input below its domain (the log of a negative number "
                       "is NaN)", ("op_family", "op_inputs", "value", "phase"))
    return None
