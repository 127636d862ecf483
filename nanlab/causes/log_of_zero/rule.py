"""log of zero: a log-family op got an exact 0 (a probability that underflowed), or its backward divided by it; or
its forward made NaN from finite inputs, which for log means a negative input (a rate or variance gone below 0)."""
from nanlab.causes.log_of_zero import CAUSE
from nanlab.diagnosis import DIRECT, Verdict

# The framework's own op names, lower-cased: torch functions and TensorFlow op types whose value is -inf at 0.
LOG_OPS = {"log", "log2", "log10", "log1p", "xlogy", "binary_cross_entropy", "bce"}


def diagnose(report) -> Verdict | None:
    if report.op_name not in LOG_OPS or report.phase not in ("forward", "loss", "backward"):
        return None
    if report.zero_input or report.value == "-inf" or report.phase == "backward":
        return Verdict(CAUSE.id, DIRECT, f"`{report.op}` got an exact 0 (a probability that underflowed)",
                       ("op", "op_inputs", "value", "phase"))
    if report.negative_input or report.value == "nan":
        return Verdict(CAUSE.id, DIRECT, f"`{report.op}` got an input below its domain (the log of a negative number is NaN)",
                       ("op", "op_inputs", "value", "phase"))
    return None
