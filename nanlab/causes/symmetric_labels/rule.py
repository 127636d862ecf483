"""Symmetric labels: -1/+1 targets reached a loss that wants 0..K-1 (an index) or 0/1 (a log loss).

-1/+1 targets are right for a hinge loss or a tanh regression, so the targets alone prove nothing: the rule needs
the loss to be one that cannot take them. Either the labels were refused as indices (the device raised, or the
batch was found with negative labels), or a log-family op failed (-1 * log(p) rewards driving p to 0).
"""
from nanlab.causes.symmetric_labels import CAUSE
from nanlab.diagnosis import DIRECT, Verdict
from nanlab.watching.vocabulary import OpFamily, Phase

# A log, or a log loss on probabilities or on logits: each wants 0/1 targets.
LOG_FAMILIES = {OpFamily.LOG, OpFamily.PROBABILITY_LOSS, OpFamily.LOGIT_LOSS}


def diagnose(report) -> Verdict | None:
    if not report.symmetric_labels:
        return None
    if report.label_problem:
        return Verdict(CAUSE.id, DIRECT + 0.05, "the labels are -1/0/+1, and a class-index loss wants 0..K-1 "
                       "(-1 is out of range)", ("symmetric_labels", "label_problem"))
    log_loss = report.op_family in LOG_FAMILIES or report.value == "-inf"
    if log_loss and report.phase in (Phase.FORWARD, Phase.LOSS, Phase.BACKWARD):
        return Verdict(CAUSE.id, DIRECT + 0.05, "the targets are -1/+1, but the loss expects 0/1 (a log loss then "
                       "rewards driving a probability to 0, and log(0) = -inf)", ("symmetric_labels", "op_family",
                                                                                 "value"))
    return None
