"""Adam's epsilon in float16: the update made the weights non-finite, the parameters (and so the optimizer's state)
are float16, and the optimizer's epsilon rounds to 0.0 in float16."""
import struct

from nanlab.causes.fp16_adam_epsilon import CAUSE
from nanlab.diagnosis import DIRECT, LOCATED, Verdict

FLOAT16_NAMES = {"float16", "half"}


def in_float16(value: float) -> float:
    """``value`` rounded to float16 (IEEE half precision, as both frameworks store it)."""
    return struct.unpack("e", struct.pack("e", value))[0]


def diagnose(report) -> Verdict | None:
    facts = report.optimizer or {}
    param_dtype = str(facts.get("param_dtype") or report.dtype or "").removeprefix("torch.")
    eps = facts.get("eps", facts.get("epsilon"))
    if report.phase != "optimizer update" or param_dtype not in FLOAT16_NAMES or eps is None:
        return None
    name = facts.get("name", "the optimizer")
    if in_float16(eps) == 0.0:
        return Verdict(CAUSE.id, DIRECT, f"{name}'s eps = {eps:g} is 0.0 in float16, the parameters' dtype, so "
                       "m / (sqrt(v) + eps) divided by an underflowed sqrt(v) = 0", ("phase", "optimizer"))
    return Verdict(CAUSE.id, LOCATED, f"{name} updated float16 parameters with eps = {eps:g} (float16 holds it as "
                   f"{in_float16(eps):.3g}): sqrt(v) underflows to 0 for small gradients and m / eps overflows",
                   ("phase", "optimizer"))
