"""Dirty data: the batch that went non-finite already held NaN/Inf in its inputs (or targets) before any op ran."""
from nanlab.causes.dirty_data import CAUSE
from nanlab.diagnosis import DIRECT, Verdict
from nanlab.watching.vocabulary import Phase


def diagnose(report) -> Verdict | None:
    if report.phase != Phase.DATA or report.label_problem or not (report.samples or report.data_findings):
        return None
    where = f"samples {', '.join(map(str, report.samples[:8]))}" if report.samples else "the batch"
    return Verdict(CAUSE.id, DIRECT, f"the batch itself holds NaN/Inf ({where}): corrupt records reached the model",
                   ("phase", "samples", "data_findings", "label_problem"))
