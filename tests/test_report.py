"""The likely-cause rules: each names its cause only on its own evidence, and says "unclear" otherwise."""
import pathlib
import re

import pytest

import nanlab
from nanlab.report import NonFiniteReport, conclude

ROOT = pathlib.Path(__file__).resolve().parents[1]

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
    (dict(phase="forward", module="act", op="exp", value="inf", grad_norms=FLAT), "softmax-overflow"),
    (dict(phase="forward", module="act", op="exp", value="inf", dtype="float16", dtype_max=65504.0, max_abs=1.2e5,
          grad_norms=FLAT), "fp16-overflow"),
    (dict(phase="forward", module="act", op="tanh", value="nan", grad_norms=FLAT), None),
    (dict(phase="forward", module="2", op="linear", grad_norms=GROWING[:2]), None),
    (dict(phase="data", data_findings=["non-finite values in samples 3"]), "dirty-data"),
])
def test_rules_name_the_cause_only_on_its_evidence(fields, cause):
    report = conclude(NonFiniteReport("torch", step=5, **fields))
    assert report.cause == cause, report.cause_reason
    assert report.cause_reason.startswith("unclear") == (cause is None)


def test_the_report_reads_as_plain_sentences_with_the_notebook():
    report = conclude(NonFiniteReport("torch", 7, "forward", module="head", op="log", value="-inf",
                                      parameter="head.weight", samples=[3], batch_size=16,
                                      op_inputs=[{"zeros": True}], grad_norms=FLAT))
    text = str(report)
    assert text.startswith("Step 7: the forward pass went non-finite (-inf) at `head` / op `log`")
    assert "sample 3 of the batch" in text and "`head.weight`" in text
    assert report.cause == "log-of-zero" and report.cause_notebook == "notebooks/pytorch/02-log-of-zero.ipynb"
    assert text.count(". ") <= 3


def test_minus_one_plus_one_targets_are_not_blamed_when_the_loss_takes_them():
    """A hinge loss trains on -1/+1 targets by design: its NaN from a too-high learning rate is the rate's fault."""
    report = conclude(NonFiniteReport("torch", 6, "forward", module="fc2", op="linear", value="inf",
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
    report = conclude(NonFiniteReport("torch", 9, "forward", module="rnn", op="log", value="-inf", recurrent=True,
                                      op_inputs=[{"zeros": True}], grad_norms=[1.0, 30.0, 900.0, 3e4]))
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
