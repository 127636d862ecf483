"""The watch's behavioural promises, written once and run for every framework nanlab knows (``list_frameworks()``):
a framework added later inherits every test here through its catalogue recipes, its loop and its backend.

- every broken catalogue run is stopped and its cause named, at the step the plain run went non-finite;
- ``raise`` and ``stop`` leave the weights from before the bad step (equal to a plain run's after that many steps);
- ``skip`` drops bad updates, records them, and gives up after ``max_skips`` in a row with a note;
- the history and the report mean the same in every framework (and the report round-trips through JSON);
- no false alarm: every catalogue fix trains under the watch bit-identically to the same run without it.
"""
import json
import math

import numpy as np
import pytest

import nanlab
from nanlab.errors import NanlabError
from nanlab.frameworks import list_frameworks
from nanlab.report import PHASES, NonFiniteReport
from nanlab.seeding import seed_everything


def _installed(framework) -> bool:
    try:
        framework.backend
    except NanlabError:
        return False
    return True


FRAMEWORKS = [pytest.param(f, id=f.name, marks=() if _installed(f) else pytest.mark.skip(f"{f.title} not installed"))
              for f in list_frameworks()]
CAUSE_RUNS = [pytest.param(f, cause, id=f"{f.name}-{cause.id}", marks=param.marks)
              for param in FRAMEWORKS for f in param.values for cause in nanlab.list_causes()
              if f.name in cause.frameworks]
FIX_RUNS = [pytest.param(f, cause, fix.id, id=f"{f.name}-{cause.id}-{fix.id}", marks=(*param.marks, pytest.mark.slow))
            for param in FRAMEWORKS for f in param.values for cause in nanlab.list_causes()
            if f.name in cause.frameworks for fix in cause.fixes if not fix.hides_problem]
HIGH_LR = "high-learning-rate"
STEPS = 40


def build(framework, cause_id: str, setting: str, seed: int = 0):
    seed_everything(seed, framework.name)
    return nanlab.get_cause(cause_id).recipe(framework.name).SETTINGS[setting](seed=seed, device="cpu")


def plain_weights_after(framework, cause_id: str, setting: str, steps: int) -> list[np.ndarray]:
    """The weights of the same run without the watch after ``steps`` updates."""
    training = build(framework, cause_id, setting)
    if steps:
        framework.loop.train(training, steps)
    return framework.backend.weights(training.model)


def assert_same_weights(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("framework, cause", CAUSE_RUNS)
def test_every_broken_catalogue_run_is_stopped_and_named(framework, cause):
    plain = nanlab.reproduce(cause, framework.name, device="cpu", seed=0)
    training = build(framework, cause.id, "broken")
    with pytest.raises(nanlab.NonFiniteError) as raised:
        # The loop stops at its first non-finite step, so a loss scaler's first skip must already count.
        with nanlab.watch(training, overflow_patience=1):
            framework.loop.train(training, cause.steps)
    report = raised.value.report
    assert report.cause == cause.id, str(report)
    assert report.cause_notebook == cause.notebooks[framework.name]
    assert report.framework == framework.name and report.phase in PHASES
    assert report.phase == "data" or (report.module and report.op and report.op_family), "localised to an op"
    if plain.first_nonfinite_step is not None:
        # A bad update shows in the loop as the next step's loss; the report names the step that made it.
        assert report.step == plain.first_nonfinite_step - (report.phase == "optimizer update")
    assert str(report).startswith(f"Step {report.step}:")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_raise_leaves_the_weights_from_before_the_bad_step(framework):
    training = build(framework, HIGH_LR, "broken")
    watch = nanlab.watch(training)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with watch:
            framework.loop.train(training, STEPS)
    report = raised.value.report
    assert watch.report is report and watch.step == report.step == len(watch.history.losses) > 0
    assert watch.history.skipped_steps == [] and not watch.stopped
    assert_same_weights(framework.backend.weights(training.model),
                        plain_weights_after(framework, HIGH_LR, "broken", report.step))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_stop_ends_training_with_the_weights_from_before_the_bad_step(framework):
    training = build(framework, HIGH_LR, "broken")
    watch = nanlab.watch(training, on_nonfinite="stop")
    with watch:
        framework.loop.train(training, STEPS)
    report = watch.report
    assert watch.stopped and report is not None and report.cause == HIGH_LR
    assert watch.history.skipped_steps == [report.step] and len(watch.history.losses) == report.step
    assert_same_weights(framework.backend.weights(training.model),
                        plain_weights_after(framework, HIGH_LR, "broken", report.step))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_skip_drops_bad_updates_and_gives_up_after_max_skips_in_a_row(framework):
    training = build(framework, HIGH_LR, "broken")
    watch = nanlab.watch(training, on_nonfinite="skip", max_skips=2)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with watch:
            framework.loop.train(training, 400)
    report = raised.value.report
    assert "Gave up after 2 skipped steps in a row." in str(report)
    skipped = watch.history.skipped_steps
    assert len(skipped) >= 2 and skipped[-2:] == [report.step - 2, report.step - 1]
    assert all(math.isfinite(loss) for loss in watch.history.losses)
    assert len(watch.history.losses) + len(skipped) == watch.step == report.step
    assert all(np.isfinite(w).all() for w in framework.backend.weights(training.model))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_history_and_report_mean_the_same_everywhere(framework):
    training = build(framework, HIGH_LR, "broken")
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training) as watch:
            framework.loop.train(training, STEPS)
    report = raised.value.report
    history = watch.history
    assert len(history.grad_norms) == len(history.losses) == watch.step
    assert history.loss_scales == []  # no mixed precision
    assert all(norm > 0 and math.isfinite(norm) for norm in history.grad_norms)
    assert report.grad_norms == history.grad_norms and report.losses == history.losses
    assert report.optimizer is not None and report.optimizer.kind and report.optimizer.learning_rate > 0
    as_json = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert NonFiniteReport.from_dict(as_json) == report
    assert json.loads(json.dumps(history.to_dict()))["losses"] == history.losses


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_policy_keywords_and_options_are_checked(framework):
    training = build(framework, HIGH_LR, "broken")
    with pytest.raises(nanlab.NanlabError, match="on_nonfinite"):
        nanlab.watch(training, on_nonfinite="ignore")
    with pytest.raises(nanlab.NanlabError, match="max_skips"):
        nanlab.watch(training, max_skips=0)
    with pytest.raises(nanlab.NanlabError, match="unknown nanlab.watch option 'patience'.*valid: on_nonfinite"):
        nanlab.watch(training, patience=3)


@pytest.mark.parametrize("framework, cause, fix", FIX_RUNS)
def test_no_false_alarm_every_fix_trains_bit_identically_under_the_watch(framework, cause, fix):
    steps = cause.steps
    plain = framework.loop.train(build(framework, cause.id, fix), steps)
    training = build(framework, cause.id, fix)
    with nanlab.watch(training) as watch:
        watched = framework.loop.train(training, steps)
    assert watch.report is None and watch.history.skipped_steps == []
    assert watched.losses == plain.losses and watched.grad_norms == plain.grad_norms
    assert watch.step == len(plain.losses)
