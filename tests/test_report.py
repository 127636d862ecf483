"""The likely-cause rules: each names its cause only on its own evidence, and says "unclear" otherwise."""
import pathlib
import re

import pytest

import nanlab
from nanlab.report import NonFiniteReport
from nanlab.watching.conclude import conclude
from nanlab.watching.vocabulary import InputStats, OpFamily, OptimizerFacts

ROOT = pathlib.Path(__file__).resolve().parents[1]

GROWING = [1.0, 30.0, 900.0, 3e4]
FLAT = [1.0, 0.9, 1.1, 1.0]


def stats(**counts) -> InputStats:
    """One float32 input of the failing op, finite, with the given counts (``zeros=1``: an exact 0 among them)."""
    return InputStats("float32", size=8, **counts)


@pytest.mark.parametrize("fields, cause", [
    (dict(phase="data", label_problem="labels outside 0..4"), "huge-labels"),
    (dict(phase="loss", huge_targets=True, op="mse_loss", op_family=OpFamily.REDUCE), "huge-labels"),
    (dict(phase="loss", symmetric_labels=True, op="log", op_family=OpFamily.LOG, value="-inf"), "symmetric-labels"),
    (dict(phase="forward", op="log", op_family=OpFamily.LOG, value="-inf", op_inputs=[stats(zeros=1)],
          grad_norms=GROWING), "log-of-zero"),
    (dict(phase="loss", op="div", op_family=OpFamily.DIV, value="nan", op_inputs=[stats(), stats(zeros=1)]),
     "division-by-zero"),
    (dict(phase="forward", module="rnn", op="rnn_tanh", op_family=OpFamily.OTHER, grad_norms=FLAT, recurrent=True),
     "exploding-rnn-gradients"),
    (dict(phase="forward", module="2", op="linear", op_family=OpFamily.MATMUL, grad_norms=GROWING),
     "high-learning-rate"),
    (dict(phase="forward", module="act", op="exp", op_family=OpFamily.EXP, value="inf", grad_norms=FLAT),
     "softmax-overflow"),
    (dict(phase="forward", module="act", op="exp", op_family=OpFamily.EXP, value="inf", dtype="float16",
          dtype_max=65504.0, max_abs=1.2e5, grad_norms=FLAT), "fp16-overflow"),
    (dict(phase="forward", module="act", op="tanh", op_family=OpFamily.ACTIVATION, value="nan", grad_norms=FLAT),
     None),
    (dict(phase="forward", module="2", op="linear", op_family=OpFamily.MATMUL, grad_norms=GROWING[:2]), None),
    (dict(phase="data", data_findings=["non-finite values in samples 3"]), "dirty-data"),
])
def test_rules_name_the_cause_only_on_its_evidence(fields, cause):
    report = conclude(NonFiniteReport("torch", step=5, **fields))
    assert report.cause == cause, report.cause_reason
    assert report.cause_reason.startswith("unclear") == (cause is None)


def test_the_report_reads_as_plain_sentences_with_the_notebook():
    report = conclude(NonFiniteReport("torch", 7, "forward", module="head", op="log", op_family=OpFamily.LOG,
                                      value="-inf", parameter="head.weight", samples=[3], batch_size=16,
                                      op_inputs=[stats(zeros=1)], grad_norms=FLAT))
    text = str(report)
    assert text.startswith("Step 7: the forward pass went non-finite (-inf) at `head` / op `log`")
    assert "sample 3 of the batch" in text and "`head.weight`" in text
    assert report.cause == "log-of-zero" and report.cause_notebook == "notebooks/pytorch/02-log-of-zero.ipynb"
    assert text.count(". ") <= 3


def test_minus_one_plus_one_targets_are_not_blamed_when_the_loss_takes_them():
    """A hinge loss trains on -1/+1 targets by design: its NaN from a too-high learning rate is the rate's fault."""
    report = conclude(NonFiniteReport("torch", 6, "forward", module="fc2", op="linear", op_family=OpFamily.MATMUL,
                                      value="inf",
                                      symmetric_labels=True, grad_norms=[1.0, 40.0, 2e3, 9e4]))
    assert report.cause == "high-learning-rate", str(report)
    assert report.runner_up is None


def test_minus_one_labels_refused_as_indices_name_both_label_causes_most_specific_first():
    report = conclude(NonFiniteReport("torch", 0, "data", symmetric_labels=True,
                                      label_problem="labels outside 0..2 (label -1 at sample 0)"))
    assert (report.cause, report.runner_up) == ("symmetric-labels", "huge-labels")
    assert "also consistent with huge-labels, because the batch has labels outside 0..2" in str(report)


def test_rules_are_ranked_by_specificity_not_by_catalogue_order():
    """log(0) inside a recurrent layer during a growing-gradient run: the op's own evidence is the most specific."""
    report = conclude(NonFiniteReport("torch", 9, "forward", module="rnn", op="log", op_family=OpFamily.LOG,
                                      value="-inf", recurrent=True, op_inputs=[stats(zeros=1)],
                                      grad_norms=[1.0, 30.0, 900.0, 3e4]))
    assert report.verdicts == ["log-of-zero", "exploding-rnn-gradients", "high-learning-rate"]
    assert report.cause == "log-of-zero" and report.runner_up is None


@pytest.mark.parametrize("cause", nanlab.list_causes(), ids=lambda cause: cause.id)
def test_every_cause_owns_its_rule(cause):
    assert cause.rule is not None, f"{cause.id} has no rule.py"


def test_no_cause_id_is_written_outside_its_own_package():
    ids = [cause.id for cause in nanlab.list_causes()]
    offenders = []
    for path in (ROOT / "nanlab").rglob("*.py"):
        relative = path.relative_to(ROOT / "nanlab")
        own = relative.parts[0] == "causes" and len(relative.parts) > 2 and relative.parts[1]
        for cause_id in ids:
            if cause_id.replace("-", "_") == own:
                continue
            if re.search(rf"[\"']{re.escape(cause_id)}[\"']", path.read_text()):
                offenders.append(f"{relative}: {cause_id}")
    assert not offenders, offenders


# -- the rules read the shared vocabulary, never a framework's spelling ---------------------------------------------
@pytest.mark.parametrize("torch_op, tensorflow_op, family, fields, cause", [
    ("div", "RealDiv", OpFamily.DIV, dict(phase="forward", value="nan", op_inputs=[stats(zeros=1)]),
     "division-by-zero"),
    ("log", "Log", OpFamily.LOG, dict(phase="loss", value="-inf", op_inputs=[stats(zeros=1)]), "log-of-zero"),
    ("sqrt", "SqrtGrad", OpFamily.SQRT, dict(phase="backward", value="nan", op_inputs=[stats(zeros=2)]),
     "sqrt-at-zero"),
    ("linalg_vector_norm", "EuclideanNorm", OpFamily.NORM, dict(phase="forward", value="nan",
                                                                op_inputs=[stats(zeros=8)]), "zero-norm"),
    ("softmax", "Softmax", OpFamily.SOFTMAX, dict(phase="forward", value="nan"), "masked-attention"),
    ("exp", "Exp", OpFamily.EXP, dict(phase="forward", value="inf", op_inputs=[stats(max_abs=120.0)]),
     "softmax-overflow"),
])
def test_one_verdict_for_the_same_evidence_whatever_the_framework_calls_the_op(torch_op, tensorflow_op, family,
                                                                                 fields, cause):
    torch_report = conclude(NonFiniteReport("torch", 3, op=torch_op, op_family=family, **fields))
    tf_report = conclude(NonFiniteReport("tensorflow", 3, op=tensorflow_op.lower(), op_family=family, **fields))
    assert torch_report.cause == tf_report.cause == cause, (str(torch_report), str(tf_report))
    assert torch_report.verdicts == tf_report.verdicts
    assert tf_report.cause_reason == torch_report.cause_reason.replace(f"`{torch_op}`", f"`{tensorflow_op.lower()}`")


def test_a_native_name_without_its_family_names_nothing():
    """The rules match on op families: a report whose op is spelt "log" but whose family is unknown is not log(0)."""
    report = conclude(NonFiniteReport("torch", 3, "forward", op="log", op_family=OpFamily.OTHER,
                                      op_inputs=[stats(zeros=1)], grad_norms=FLAT))
    assert report.cause is None and report.cause_reason.startswith("unclear"), str(report)


def test_the_backward_of_a_root_at_zero_is_sqrt_at_zero_alone():
    """Backward culprits carry their forward inputs' statistics (zeros under the root): the division rule must not
    claim them, or it would outrank sqrt-at-zero by catalogue order and the notebooks would name another cause."""
    for op, family in (("sqrt", OpFamily.SQRT), ("sqrtgrad", OpFamily.SQRT), ("std", OpFamily.STATISTIC),
                       ("linalg_vector_norm", OpFamily.NORM)):
        report = conclude(NonFiniteReport("torch", 3, "backward", op=op, op_family=family, value="nan",
                                          op_inputs=[stats(zeros=4)]))
        assert report.verdicts == ["sqrt-at-zero"], (op, report.verdicts)
        assert report.cause_reason == (f"the forward pass was finite and the backward pass of `{op}` was the first "
                                       "to go non-finite: the derivative of sqrt at 0 is inf, and inf * 0 = NaN")


@pytest.mark.parametrize("framework, op, text", [
    # the sentences the notebooks print (pytorch/11, tensorflow/11, pytorch/03, tensorflow/03), word for word
    ("torch", "rsqrt", "Likely cause: zero-norm (see notebooks/pytorch/11-zero-norm.ipynb), because `rsqrt` took "
     "the inverse length of a vector that is all zeros (1 / 0 = inf, and 0 * inf = NaN); also consistent with "
     "division-by-zero, because `rsqrt` divided by (or took the root of) an exact 0."),
    ("tensorflow", "rsqrt", "Likely cause: zero-norm (see notebooks/tensorflow/11-zero-norm.ipynb), because `rsqrt` "
     "took the inverse length of a vector that is all zeros (1 / 0 = inf, and 0 * inf = NaN); also consistent with "
     "division-by-zero, because `rsqrt` divided by (or took the root of) an exact 0."),
    ("torch", "div", "Likely cause: division-by-zero (see notebooks/pytorch/03-division-by-zero.ipynb), because "
     "`div` divided by (or took the root of) an exact 0."),
    ("tensorflow", "realdiv", "Likely cause: division-by-zero (see notebooks/tensorflow/03-division-by-zero.ipynb), "
     "because `realdiv` divided by (or took the root of) an exact 0."),
])
def test_the_reasons_the_notebooks_print_are_unchanged(framework, op, text):
    family = OpFamily.RSQRT if op == "rsqrt" else OpFamily.DIV
    report = conclude(NonFiniteReport(framework, 2, "forward", module="norm", op=op, op_family=family, value="nan",
                                      op_inputs=[stats(zeros=3)]))
    assert str(report).endswith(text), str(report)


def test_a_report_round_trips_through_its_dict_to_the_same_verdict():
    report = NonFiniteReport("tensorflow", 4, "optimizer update", op="apply_gradients", op_family=OpFamily.OTHER,
                             optimizer=OptimizerFacts("Adam", learning_rate=1e-3, eps=1e-8, param_dtype="float16"),
                             op_inputs=[stats(zeros=1, min=0.0, max=2.0, min_abs=0.0, max_abs=2.0)])
    again = NonFiniteReport.from_dict(report.to_dict())
    assert again == report
    assert conclude(again).cause == conclude(report).cause == "fp16-adam-epsilon"


def test_an_overflowing_power_with_a_zero_among_its_inputs_is_no_division_by_zero():
    """A square is a power: with a 0 somewhere in its input and a result past float32's range (recomputed wider,
    ``max_abs``), it overflowed; the zero did not divide anything."""
    fields = dict(phase="loss", op="square", op_family=OpFamily.POW, value="inf", dtype="float32",
                  dtype_max=3.4028234663852886e38, op_inputs=[stats(zeros=1, max_abs=3e25)],
                  grad_norms=[1.0, 30.0, 900.0, 3e4])
    overflow = conclude(NonFiniteReport("tensorflow", 4, max_abs=9e50, **fields))
    assert "division-by-zero" not in overflow.verdicts and overflow.cause == "high-learning-rate", str(overflow)
    reciprocal = conclude(NonFiniteReport("torch", 4, op="pow", op_family=OpFamily.POW, value="inf", phase="forward",
                                          dtype="float32", dtype_max=3.4028234663852886e38, max_abs=2.0,
                                          op_inputs=[stats(zeros=1, max_abs=2.0)]))
    assert reciprocal.cause == "division-by-zero", str(reciprocal)


def test_a_fractional_power_at_zero_in_the_backward_pass_is_sqrt_at_zero():
    """x ** 0.5 or a focal loss's (1 - p) ** gamma with gamma < 1: the power's inputs held an exact 0."""
    report = conclude(NonFiniteReport("torch", 5, "backward", module="loss", op="pow", op_family=OpFamily.POW,
                                      value="nan", op_inputs=[stats(zeros=2, min=0.0, max=0.9, min_abs=0.0)]))
    assert report.verdicts == ["sqrt-at-zero"], report.verdicts
    assert "fractional power" in report.cause_reason and "`pow`" in report.cause_reason
    no_zero = conclude(NonFiniteReport("torch", 5, "backward", module="loss", op="pow", op_family=OpFamily.POW,
                                       value="nan", op_inputs=[stats(min=0.1, max=0.9, min_abs=0.1)]))
    assert "sqrt-at-zero" not in no_zero.verdicts


@pytest.mark.parametrize("op, family, cause, words", [
    ("log", OpFamily.LOG, "log-of-zero", "the log of a negative number is NaN"),
    ("log1p", OpFamily.LOG, "log-of-zero", "the log of a negative number is NaN"),
    ("sqrt", OpFamily.SQRT, "sqrt-at-zero", "the square root of a negative number is NaN"),
    ("rsqrt", OpFamily.RSQRT, "sqrt-at-zero", "the square root of a negative number is NaN"),
])
def test_an_input_below_the_domain_is_read_from_its_statistics(op, family, cause, words):
    """One notion of "below its domain" for the log and the root families: a NaN from NaN-free inputs, one of them
    holding values below 0 (its negatives count or its minimum)."""
    below = stats(negatives=1, min=-1e-9, max=2.0, min_abs=1e-9, max_abs=2.0)
    report = conclude(NonFiniteReport("torch", 3, "forward", op=op, op_family=family, value="nan",
                                      op_inputs=[below]))
    assert report.cause == cause and words in report.cause_reason and report.runner_up is None, str(report)
    inside = conclude(NonFiniteReport("torch", 3, "forward", op=op, op_family=family, value="nan",
                                      op_inputs=[stats(min=0.5, max=2.0, min_abs=0.5, max_abs=2.0)]))
    assert inside.cause != "sqrt-at-zero", "a root's NaN from inputs inside its domain is not this evidence"
