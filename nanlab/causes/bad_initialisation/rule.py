"""Bad initialisation: values far past unit scale from the very first step, with inputs and targets at unit scale.

Before any update only the data and the initial weights decide what a network computes. With the inputs at unit
scale (``input_max_abs``), sane targets and no label problem, a first loss (``losses[0]``, step 0's) of a million or
more, or a failing op at step 0 fed such values (``op_inputs``), can only come from weights whose scale multiplies
the signal layer after layer. Runs where the data carries the scale (dirty data, unnormalised inputs, huge labels),
a recurrent layer (exploding RNN gradients) or a half-precision dtype (fp16 overflow) are left to their own rules.
"""
from nanlab.causes.bad_initialisation import CAUSE
from nanlab.diagnosis import LOCATED, Verdict, narrow_range
from nanlab.evidence import UNNORMALISED_SCALE
from nanlab.watching.vocabulary import Phase

# A network at initialisation keeps its activations and its loss within ~1-100 (ln K for a K-class cross-entropy);
# a million times the unit scale is no longer a matter of a slightly too large weight.
HUGE_SCALE = 1e6
EARLY_STEPS = 5  # how soon the NaN must follow: the huge values are there from step 0


def diagnose(report) -> Verdict | None:
    if report.phase == Phase.DATA or report.step > EARLY_STEPS or report.recurrent:
        return None
    if report.label_problem or report.huge_targets:
        return None
    if narrow_range(report):  # float16 overflows on values float32 holds: the fp16-overflow rule's evidence
        return None
    if report.input_max_abs is not None and report.input_max_abs > UNNORMALISED_SCALE:
        return None
    if report.filled_from is not None:  # the huge values are a mask's fill (finfo.min), not the signal
        return None
    inputs = _inputs_at_unit_scale(report)
    first_loss = report.losses[0] if report.losses else None
    if first_loss is not None and abs(first_loss) >= HUGE_SCALE:
        return Verdict(CAUSE.id, LOCATED,
                       f"the loss was already {first_loss:.3g} at step 0, before any update, {inputs}: the weights "
                       "as initialised multiply the signal layer after layer (N(0, 1) weights in a deep net); "
                       "use He initialisation for ReLU layers (Glorot for tanh) or normalisation layers",
                       ("losses", "step", "input_max_abs", "huge_targets", "label_problem", "dtype_max"))
    largest = _largest_op_input(report)
    if report.step == 0 and largest is not None and largest >= HUGE_SCALE:
        where = f"`{report.op}`" if report.op else "the failing op"
        return Verdict(CAUSE.id, LOCATED,
                       f"at step 0, before any update, {where} was fed values up to {largest:.3g} {inputs}: the "
                       "weights as initialised multiply the signal layer after layer (N(0, 1) weights in a deep "
                       "net); use He initialisation for ReLU layers (Glorot for tanh) or normalisation layers",
                       ("step", "op_inputs", "input_max_abs", "huge_targets", "label_problem", "dtype_max"))
    return None


def _largest_op_input(report) -> float | None:
    largest = [entry.max_abs for entry in report.op_inputs if entry.max_abs is not None]
    return max(largest) if largest else None


def _inputs_at_unit_scale(report) -> str:
    if report.input_max_abs is None:
        return "with sane targets"
    return f"from inputs of |x| <= {report.input_max_abs:.3g}"
