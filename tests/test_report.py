"""The likely-cause rules: each names its cause only on its own evidence, and says "unclear" otherwise."""
import pytest

from nanlab.report import NonFiniteReport, conclude, name_cause

GROWING = [1.0, 30.0, 900.0, 3e4]
FLAT = [1.0, 0.9, 1.1, 1.0]


@pytest.mark.parametrize("fields, cause", [
    (dict(phase="data", label_problem="labels outside 0..4"), "huge-labels"),
    (dict(phase="loss", huge_targets=True, op="mse_loss"), "huge-labels"),
    (dict(phase="loss", symmetric_labels=True, op="log", value="-inf"), "symmetric-labels"),
    (dict(phase="forward", op="log", value="-inf", op_inputs=[{"zeros": True}], grad_norms=GROWING),
     "log-of-zero"),
    (dict(phase="loss", op="div", value="nan", op_inputs=[{"zeros": False}, {"zeros": True}]), "division-by-zero"),
    (dict(phase="forward", module="rnn", op="rnn_tanh", grad_norms=FLAT, recurrent=True),
     "exploding-rnn-gradients"),
    (dict(phase="forward", module="2", op="linear", grad_norms=GROWING), "high-learning-rate"),
    (dict(phase="forward", module="act", op="exp", value="inf", grad_norms=FLAT), None),
    (dict(phase="forward", module="2", op="linear", grad_norms=GROWING[:2]), None),
    (dict(phase="data", data_findings=["non-finite values in samples 3"]), None),
])
def test_rules_name_the_cause_only_on_its_evidence(fields, cause):
    report = NonFiniteReport("torch", step=5, **fields)
    named, reason = name_cause(report)
    assert named == cause, reason
    assert reason.startswith("unclear") == (cause is None)


def test_the_report_reads_as_plain_sentences_with_the_notebook():
    report = conclude(NonFiniteReport("torch", 7, "forward", module="head", op="log", value="-inf",
                                      parameter="head.weight", samples=[3], batch_size=16,
                                      op_inputs=[{"zeros": True}], grad_norms=FLAT))
    text = str(report)
    assert text.startswith("Step 7: the forward pass went non-finite (-inf) at `head` / op `log`")
    assert "sample 3 of the batch" in text and "`head.weight`" in text
    assert report.cause == "log-of-zero" and report.cause_notebook == "notebooks/pytorch/02-log-of-zero.ipynb"
    assert text.count(". ") <= 3
