"""Division by zero: a division, reciprocal or root got an exact 0 in its denominator (or under its root)."""
from nanlab.causes.division_by_zero import CAUSE
from nanlab.diagnosis import DIRECT, Verdict

DIVISION_OPS = {"div", "true_divide", "truediv", "divide", "reciprocal", "rsqrt", "sqrt", "pow", "realdiv",
                "divnonan", "floordiv", "norm", "normalize", "cosine_similarity", "std", "var"}


def diagnose(report) -> Verdict | None:
    if report.op_name in DIVISION_OPS and report.phase in ("forward", "loss", "backward") and report.zero_input:
        return Verdict(CAUSE.id, DIRECT, f"`{report.op}` divided by (or took the root of) an exact 0",
                       ("op", "op_inputs", "phase"))
    return None
