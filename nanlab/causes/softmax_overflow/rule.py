"""Softmax overflow: ``exp`` turned finite inputs into inf (float32 overflows past 88.72)."""
from nanlab.causes.softmax_overflow import CAUSE
from nanlab.diagnosis import DIRECT, Verdict

EXP_OPS = {"exp"}  # torch.exp and TensorFlow's Exp op, lower-cased


def diagnose(report) -> Verdict | None:
    if report.op_name in EXP_OPS and report.value == "inf" and report.phase in ("forward", "loss"):
        return Verdict(CAUSE.id, DIRECT, f"`{report.op}` of finite inputs{_largest_input(report)} gave inf (float32 exp "
                       "overflows past 88.72); a softmax or logsumexp built on it divides inf by inf",
                       ("op", "value", "op_inputs", "phase"))
    return None


def _largest_input(report) -> str:
    largest = [entry["max_abs"] for entry in report.op_inputs if entry.get("max_abs") is not None]
    return f" (up to {max(largest):.3g})" if largest else ""
