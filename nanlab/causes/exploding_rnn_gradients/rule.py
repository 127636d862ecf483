"""Exploding RNN gradients: the overflow happened inside a recurrent layer (its module kind or parameter)."""
from nanlab.causes.exploding_rnn_gradients import CAUSE
from nanlab.diagnosis import LOCATED, Verdict
from nanlab.watching.vocabulary import Phase


def diagnose(report) -> Verdict | None:
    if not report.recurrent or report.phase == Phase.DATA:
        return None
    trend = f"; the {report.norm_name} grew {report.growth:.3g}x before it" if report.exploding else ""
    return Verdict(CAUSE.id, LOCATED,
                   "it overflowed inside a recurrent layer, which multiplies the hidden state (forward) and its "
                   f"gradient (backward) by the recurrent weights once per time step{trend}",
                   ("recurrent", "module", "parameter", "grad_norms"))
