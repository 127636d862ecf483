"""Huge labels: class labels outside 0..K-1, or regression targets so large that the squared error overflows."""
from nanlab.causes.huge_labels import CAUSE
from nanlab.diagnosis import DIRECT, LOCATED, Verdict
from nanlab.watching.vocabulary import Phase


def diagnose(report) -> Verdict | None:
    if report.label_problem:
        return Verdict(CAUSE.id, DIRECT, f"the batch has {report.label_problem}", ("label_problem",))
    if report.huge_targets and report.phase != Phase.DATA:
        return Verdict(CAUSE.id, LOCATED, "the regression targets are huge (|y| > 1e4), so the squared error "
                       "overflows", ("huge_targets", "phase"))
    return None
