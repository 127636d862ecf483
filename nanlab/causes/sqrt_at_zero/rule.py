"""Square root at zero: the forward pass was finite and the backward pass of a square root was the first to go
non-finite (its derivative 1 / (2 sqrt(0)) = inf, times the zero derivative of its input)."""
from nanlab.causes.sqrt_at_zero import CAUSE
from nanlab.diagnosis import DIRECT, Verdict

# A square root in the backward pass: torch names the forward op whose autograd node failed, TensorFlow the
# gradient op itself.
ROOT_OPS = {"sqrt", "sqrtgrad", "std", "norm", "linalg_vector_norm"}


def diagnose(report) -> Verdict | None:
    if report.phase == "backward" and report.op_name in ROOT_OPS:
        return Verdict(CAUSE.id, DIRECT, f"the forward pass was finite and the backward pass of `{report.op}` was "
                       "the first to go non-finite: the derivative of sqrt at 0 is inf, and inf * 0 = NaN",
                       ("phase", "op", "value"))
    return None
