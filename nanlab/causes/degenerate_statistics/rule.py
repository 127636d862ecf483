"""Degenerate statistics: a spread computed over one element, or a mean over none.

Three shapes of the same evidence, each in the forward pass (or the loss):
- a std/var (the statistic family) went NaN from finite inputs over groups of one element (the replay's
  ``reduced_count``: how many elements each output reduced, e.g. a per-channel std over a group of one, a std over
  an axis of length 1), over a batch of one sample, or over an input that holds one element or none: Bessel's
  correction divides by n - 1 = 0. A std or variance of finite inputs that are not near the dtype's limit is NaN
  only when the reduction has no degrees of freedom left, so the same op without that size evidence (a replay that
  could not count the reduced elements) is named at the lower, located level;
- a mean (the reduce family) went NaN over an empty input: 0 / 0, the mean of an empty selection;
- a division 0 / 0, every element of every input an exact 0, over a batch of one sample: an unbiased variance
  written by hand, the sum of squared deviations from the mean of one element (0) over n - 1 = 0. A bare
  division by zero fits too (the division rule names it as the runner-up); a batch of one with nothing but zeros
  on both sides is what makes it the statistic.
"""
from nanlab.causes.degenerate_statistics import CAUSE
from nanlab.diagnosis import DIRECT, LOCATED, Verdict, overflowed, range_limit
from nanlab.watching.vocabulary import OpFamily, Phase

STATISTIC_FAMILIES = {OpFamily.STATISTIC}  # std, var and the ops built on them (std_mean, cov)
MEAN_FAMILIES = {OpFamily.REDUCE}          # a mean among the reductions (a sum or max of nothing is not NaN)
DIVISION_FAMILIES = {OpFamily.DIV}
FORWARD = (Phase.FORWARD, Phase.LOSS)
# More specific than a bare division by zero: the size of the batch (or of the input) says why the zero is there.
SPECIFIC = 0.03


def diagnose(report) -> Verdict | None:
    if report.phase not in FORWARD or report.value != "nan":
        return None
    if report.op_family in STATISTIC_FAMILIES and _finite_inputs(report) and not _overflow(report):
        groups_of_one = report.reduced_count is not None and report.reduced_count <= 1
        if groups_of_one or report.batch_size == 1 or _any_input_of_at_most_one_element(report):
            where, remedy = (
                ("a batch of one sample", "drop the incomplete last batch") if report.batch_size == 1 else
                ("an input of one element", "skip groups of one") if _any_input_of_at_most_one_element(report) else
                (f"groups of {report.reduced_count} element (the reduced axis or group holds "
                 f"{report.reduced_count})", "reduce over more elements per group"))
            return Verdict(CAUSE.id, DIRECT + SPECIFIC, f"`{report.op}` (an unbiased std or variance) was taken over "
                           f"{where}: Bessel's correction divides by n - 1 = 0, so it is 0 / 0 = NaN with no zero in "
                           f"the data (use the population statistic, correction=0, or {remedy})",
                           ("op_family", "phase", "value", "batch_size", "reduced_count", "op_inputs"))
        return Verdict(CAUSE.id, LOCATED, f"`{report.op}` (a std or variance) turned finite inputs into NaN, which it "
                       "does only when the reduced axis holds no more elements than its correction (one, for the "
                       "unbiased default): a group or an axis of one", ("op_family", "phase", "value", "op_inputs"))
    if report.op_family in MEAN_FAMILIES and _any_empty_input(report):
        return Verdict(CAUSE.id, DIRECT, f"`{report.op}` reduced an empty tensor: the mean of an empty selection is "
                       "0 / 0 = NaN (a mask or a group that selected nothing)", ("op_family", "phase", "value",
                                                                                  "op_inputs"))
    if report.op_family in DIVISION_FAMILIES and report.batch_size == 1 and _zero_over_zero(report):
        return Verdict(CAUSE.id, DIRECT + SPECIFIC, f"`{report.op}` computed 0 / 0 over a batch of one sample: an "
                       "unbiased variance written by hand divides the squared deviations from the mean (0 for one "
                       "sample) by n - 1 = 0", ("op_family", "phase", "value", "batch_size", "op_inputs"))
    return None


def _finite_inputs(report) -> bool:
    return all(not entry.nonfinite for entry in report.op_inputs)


def _overflow(report) -> bool:
    """Squares past the dtype's range (a float16 variance of values above 256) are an overflow, not a missing degree
    of freedom: the rules that read the dtype's limit name those."""
    limit = range_limit(report)
    return overflowed(report) or limit is not None and any(
        entry.max_abs is not None and entry.max_abs ** 2 > limit for entry in report.op_inputs)


def _any_input_of_at_most_one_element(report) -> bool:
    return any(entry.size <= 1 and not entry.nonfinite for entry in report.op_inputs)


def _any_empty_input(report) -> bool:
    """An input with no element at all (nothing counted, no finite range)."""
    return any(entry.size == 0 and entry.min is None and not (entry.zeros or entry.negatives or entry.nonfinite)
               for entry in report.op_inputs)


def _zero_over_zero(report) -> bool:
    """Every input of the division is all exact zeros: 0 / 0 everywhere, not x / 0 somewhere."""
    return len(report.op_inputs) >= 2 and all(entry.size > 0 and entry.zeros == entry.size
                                              for entry in report.op_inputs)
