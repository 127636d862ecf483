"""Adam's epsilon in float16: the update made the weights non-finite, the parameters (and so the optimizer's state)
are float16, and the optimizer's epsilon rounds to 0.0 in float16.

Reads the optimizer's facts in the shared vocabulary (``OptimizerFacts``: ``kind``, ``eps``, ``param_dtype``),
which each framework fills from its own names (torch's ``eps``, Keras' ``epsilon``)."""
import struct

from nanlab.causes.fp16_adam_epsilon import CAUSE
from nanlab.diagnosis import DIRECT, LOCATED, Verdict
from nanlab.watching.vocabulary import Phase

FLOAT16 = "float16"


def in_float16(value: float) -> float:
    """``value`` rounded to float16 (IEEE half precision, as both frameworks store it)."""
    return struct.unpack("e", struct.pack("e", value))[0]


def diagnose(report) -> Verdict | None:
    facts = report.optimizer
    if report.phase != Phase.OPTIMIZER or facts is None or facts.eps is None:
        return None
    if (facts.param_dtype or report.dtype) != FLOAT16:
        return None
    name, eps = facts.kind or "the optimizer", facts.eps
    if in_float16(eps) == 0.0:
        return Verdict(CAUSE.id, DIRECT, f"{name}'s eps = {eps:g} is 0.0 in float16, the parameters' dtype, so "
                       "m / (sqrt(v) + eps) divided by an underflowed sqrt(v) = 0", ("phase", "optimizer"))
    return Verdict(CAUSE.id, LOCATED, f"{name} updated float16 parameters with eps = {eps:g} (float16 holds it as "
                   f"{in_float16(eps):.3g}): sqrt(v) underflows to 0 for small gradients and m / eps overflows",
                   ("phase", "optimizer"))
