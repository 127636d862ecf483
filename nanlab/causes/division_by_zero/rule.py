"""Division by zero: a division, reciprocal or root got an exact 0 in its denominator (or under its root).

Read from the shared vocabulary: the failing op's family (a division, rsqrt, sqrt or power, whatever the framework
calls it) and its inputs' statistics (an exact zero among them). In the backward pass only a division counts: the
backward of a root or a power at 0 is the sqrt-at-zero rule's evidence (a finite forward, an infinite derivative).
An op whose true result passed its dtype's limit overflowed (a square of a huge value): a zero among its inputs
did not make that.
"""
from nanlab.causes.division_by_zero import CAUSE
from nanlab.diagnosis import DIRECT, Verdict, overflowed
from nanlab.watching.vocabulary import OpFamily, Phase

# Ops whose value is infinite (or NaN) at an exact 0: x / 0, 1 / sqrt(0), 0 ** -1, and sqrt's own 0 at a root.
DIVISION_FAMILIES = {OpFamily.DIV, OpFamily.RSQRT, OpFamily.SQRT, OpFamily.POW}
BACKWARD_FAMILIES = {OpFamily.DIV}


def diagnose(report) -> Verdict | None:
    if not report.zero_input or overflowed(report):
        return None
    forward = report.phase in (Phase.FORWARD, Phase.LOSS) and report.op_family in DIVISION_FAMILIES
    backward = report.phase == Phase.BACKWARD and report.op_family in BACKWARD_FAMILIES
    if forward or backward:
        return Verdict(CAUSE.id, DIRECT, f"`{report.op}` divided by (or took the root of) an exact 0",
                       ("op_family", "op_inputs", "phase"))
    return None
