"""Masked attention: a softmax returned NaN from NaN-free scores, which only a row of -inf (every key masked) or
a +inf score can do: the softmax of finite scores is always finite, since it subtracts the row's maximum."""
from nanlab.causes.masked_attention import CAUSE
from nanlab.diagnosis import DIRECT, Verdict

# torch function names and TensorFlow op types, lower-cased; the attention functions hold a softmax inside
SOFTMAX_OPS = {"softmax", "log_softmax", "logsoftmax", "scaled_dot_product_attention", "multi_head_attention_forward"}


def diagnose(report) -> Verdict | None:
    if report.op_name in SOFTMAX_OPS and report.value == "nan" and report.phase in ("forward", "loss"):
        return Verdict(CAUSE.id, DIRECT, f"`{report.op}` turned NaN-free scores into NaN, which a softmax does only "
                       "for a row whose every score is -inf (all keys masked): -inf - (-inf) = NaN",
                       ("op", "value", "phase"))
    return None
