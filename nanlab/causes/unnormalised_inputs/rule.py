"""Unnormalised inputs: the batch's inputs were far from unit scale (raw pixels, raw units) when training blew up.

Reads ``input_max_abs``, the largest finite |x| the watch saw in the failing batch's model inputs. Large inputs
alone are not a failure; with a non-finite step after them they explain the overshoot a learning rate would be
blamed for (the curvature of the loss grows with the square of the input scale). A half-precision run is left to
the rules that read its dtype limit, the more specific evidence there.
"""
from nanlab.causes.unnormalised_inputs import CAUSE
from nanlab.diagnosis import LOCATED, Verdict, narrow_range
from nanlab.evidence import UNNORMALISED_SCALE
from nanlab.watching.vocabulary import Phase


def diagnose(report) -> Verdict | None:
    scale = report.input_max_abs
    if scale is None or scale <= UNNORMALISED_SCALE or report.phase == Phase.DATA:
        return None
    if narrow_range(report):
        return None
    trend = f"; the {report.norm_name} grew {report.growth:.3g}x before the NaN" if report.exploding else ""
    return Verdict(CAUSE.id, LOCATED,
                   f"the inputs reach |x| = {scale:.3g}, far from unit scale: the loss's curvature grows with the "
                   f"square of the input scale, so each step overshoots{trend}",
                   ("input_max_abs", "phase", "grad_norms", "dtype_max"))
