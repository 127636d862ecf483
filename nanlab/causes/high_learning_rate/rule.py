"""A learning rate too high: the gradient (or update) norm grew by orders of magnitude before the NaN."""
from nanlab.causes.high_learning_rate import CAUSE
from nanlab.diagnosis import TREND, Verdict
from nanlab.watching.vocabulary import Phase


def diagnose(report) -> Verdict | None:
    if report.phase == Phase.DATA or not report.exploding:
        return None
    return Verdict(CAUSE.id, TREND,
                   f"the {report.norm_name} grew {report.growth:.3g}x over the {len(report.grad_norms)} steps "
                   "before the NaN: each update overshoots", ("grad_norms", "phase"))
