"""The mixed-precision causes: fp16-overflow and fp16-adam-epsilon. The numbers their notebooks state, measured over
whole runs in both frameworks; their rules on built evidence; and nanlab.watch naming them end to end."""
import math

import numpy as np
import pytest

import nanlab
from nanlab.diagnosis import DIRECT, LOCATED, rank
from nanlab.frameworks import get_framework
from nanlab.report import NonFiniteReport
from nanlab.watching.conclude import conclude
from nanlab.watching.vocabulary import OpFamily, OptimizerFacts
from nanlab.seeding import seed_everything

OVERFLOW = nanlab.get_cause("fp16-overflow")
EPSILON = nanlab.get_cause("fp16-adam-epsilon")
FLAT = [1.0, 0.9, 1.1, 1.0]
GROWING = [1.0, 30.0, 900.0, 3e4]
ADAM_FLOAT16 = OptimizerFacts("Adam", learning_rate=1e-3, eps=1e-8, param_dtype="float16")


def training_of(cause, framework, setting="broken", seed=0):
    seed_everything(seed, framework)
    return cause.recipe(framework).SETTINGS[setting](seed=seed, device="cpu")


# -- the rules, on the evidence the watches fill ------------------------------------------------------------------
@pytest.mark.parametrize("fields, cause, specificity", [
    (dict(phase="forward", module="module.0", op="linear", op_family=OpFamily.MATMUL, dtype="float16",
          dtype_max=65504.0, max_abs=1.1e5, value="inf"), "fp16-overflow", DIRECT),
    (dict(phase="forward", module="dense", op="cast", op_family=OpFamily.OTHER, dtype="float16", dtype_max=65504.0,
          max_abs=7.9e4, value="-inf", grad_norms=FLAT), "fp16-overflow", DIRECT),
    (dict(phase="forward", op="linear", op_family=OpFamily.MATMUL, dtype="float16", dtype_max=65504.0,
          max_abs=5.8e4, value="nan", skipped_in_a_row=10, loss_scale=128.0), "fp16-overflow", LOCATED),
    (dict(phase="forward", op="matmul", op_family=OpFamily.MATMUL, dtype="float16", dtype_max=65504.0, max_abs=3e3,
          value="nan"), "fp16-overflow", LOCATED),
    (dict(phase="optimizer update", module="Adam", op="step", op_family=OpFamily.OTHER, optimizer=ADAM_FLOAT16),
     "fp16-adam-epsilon", DIRECT),
    # Keras' epsilon is OptimizerFacts.eps too; the parameters' dtype from the report where the facts lack it
    (dict(phase="optimizer update", op="apply_gradients", op_family=OpFamily.OTHER, dtype="float16",
          optimizer=OptimizerFacts("Adam", learning_rate=1e-3, eps=1e-7)), "fp16-adam-epsilon", LOCATED),
])
def test_rules_name_the_mixed_precision_causes_on_their_evidence(fields, cause, specificity):
    report = conclude(NonFiniteReport("torch", step=3, **fields))
    assert report.cause == cause, report.cause_reason
    assert rank(report)[0].specificity == specificity
    assert report.runner_up is None, report.runner_up_reason


@pytest.mark.parametrize("fields", [
    # bfloat16 has float32's range: what overflows there is not a float16 problem
    dict(phase="forward", op="linear", op_family=OpFamily.MATMUL, dtype="bfloat16", dtype_max=3.39e38, max_abs=1e5,
         value="inf"),
    # float32 overflow (a learning rate, a softmax): not ours
    dict(phase="forward", op="linear", op_family=OpFamily.MATMUL, dtype="float32", max_abs=1e39, value="inf",
         grad_norms=GROWING),
    # NaN weights read back in float16 (small inputs): the update's fault, not an overflow
    dict(phase="forward", op="readvariableop", op_family=OpFamily.OTHER, dtype="float16", dtype_max=65504.0,
         max_abs=2.4, value="nan"),
    # a float32 Adam keeps its eps; an optimizer without eps is not this cause
    dict(phase="optimizer update", op="step", op_family=OpFamily.OTHER,
         optimizer=OptimizerFacts("Adam", learning_rate=1e-3, eps=1e-8, param_dtype="float32")),
    dict(phase="optimizer update", op="step", op_family=OpFamily.OTHER,
         optimizer=OptimizerFacts("SGD", learning_rate=5.0, param_dtype="float16")),
    # Adam's facts outside an update, and skipped steps without float16
    dict(phase="backward", op="mm", op_family=OpFamily.MATMUL, optimizer=ADAM_FLOAT16),
    dict(phase="forward", op="linear", op_family=OpFamily.MATMUL, skipped_in_a_row=12, loss_scale=1e-3),
])
def test_mixed_precision_rules_stay_silent_on_other_evidence(fields):
    verdicts = [verdict.cause for verdict in rank(NonFiniteReport("torch", step=3, **fields))]
    assert OVERFLOW.id not in verdicts and EPSILON.id not in verdicts, verdicts


def test_a_growing_float16_sgd_update_stays_a_learning_rate_problem():
    report = conclude(NonFiniteReport("torch", 6, "optimizer update", op="step", op_family=OpFamily.OTHER,
                                      grad_norms=GROWING,
                                      optimizer=OptimizerFacts("SGD", learning_rate=5.0, param_dtype="float16")))
    assert report.cause == "high-learning-rate" and EPSILON.id not in report.verdicts


# -- fp16 overflow: the mechanism, PyTorch ------------------------------------------------------------------------
def test_float16_ends_at_65504_and_bfloat16_has_float32_range():
    torch = pytest.importorskip("torch")
    rounded = torch.tensor([65504.0, 65519.0, 65520.0, 1e5]).half().float().tolist()
    assert rounded == [65504.0, 65504.0, math.inf, math.inf]
    assert torch.finfo(torch.float16).max == 65504.0 and torch.finfo(torch.bfloat16).max > 3e38
    assert torch.isfinite(torch.tensor([1e5, 1e30]).bfloat16()).all()


def test_every_batch_passes_65504_and_only_float16_cares():
    torch = pytest.importorskip("torch")
    training = training_of(OVERFLOW, "torch")
    layers = training.model.module
    for _ in range(20):
        x, _ = next(training.batches)
        with torch.no_grad():
            assert x.abs().max().item() > 65504.0 and torch.isfinite(layers[0](x)).all()  # float32: fine
            with torch.autocast("cpu", dtype=torch.float16):
                assert not torch.isfinite(layers[0](x)).all()  # autocast casts x to float16: inf


def test_grad_scaler_skips_every_step_and_its_scale_collapses():
    """The numbers of issue 10: the scale after each of 60 skipped steps is 65536 / 2**(k+1), ending at 5.7e-14."""
    torch = pytest.importorskip("torch")
    for setting, initial in [("broken", 2.0 ** 16), ("raise-loss-scale", 2.0 ** 24)]:
        training = training_of(OVERFLOW, "torch", setting)
        model, optimizer, scaler = training.model, training.optimizer, training.scaler
        before = [p.detach().clone() for p in model.parameters()]
        losses, scales = [], []
        for _ in range(60):
            x, y = next(training.batches)
            optimizer.zero_grad()
            loss = training.loss_fn(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
            scales.append(scaler.get_scale())
        assert not any(math.isfinite(loss) for loss in losses), setting
        assert scales == [initial * 0.5 ** (k + 1) for k in range(60)], setting
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "every step was skipped"
    assert math.isclose(2.0 ** 16 * 0.5 ** 60, 5.68e-14, rel_tol=1e-3)


# -- fp16 overflow: the mechanism, Keras --------------------------------------------------------------------------
def test_keras_loss_scale_optimizer_skips_every_step_of_the_broken_run():
    pytest.importorskip("tensorflow")
    from nanlab.frameworks.tensorflow.loop import tf

    training = training_of(OVERFLOW, "tensorflow")
    model, optimizer = training.model, training.optimizer
    assert model.layers[0].compute_dtype == "float16" and model.layers[0].variable_dtype == "float32"
    before = [v.numpy().copy() for v in model.trainable_variables]
    losses, scales = [], []
    for _ in range(20):
        x, y = next(training.batches)
        with tf.GradientTape() as tape:
            loss = training.loss_fn(y, model(x, training=True))  # already multiplied by the loss scale
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        losses.append(float(loss))
        scales.append(float(optimizer.dynamic_scale.numpy()))
    assert not any(math.isfinite(loss) for loss in losses)
    assert scales == [2.0 ** 15 * 0.5 ** (k + 1) for k in range(20)]
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.trainable_variables))


# -- Adam's epsilon in float16 -----------------------------------------------------------------------------------
def test_adam_eps_in_float16():
    assert np.float16(1e-8) == 0.0 and np.float16(1e-4) > 0.0
    assert np.float16(1e-7) == np.float16(1.1920928955078125e-07)  # Keras' default survives, as 2 denormal steps
    assert np.float16(6e-8) > 0 and np.float16(2.9e-8) == 0.0  # the smallest positive float16 is 5.96e-8


GRADIENTS = [0.0, 1e-3, -1e-3, 0.5]  # zero, small (g**2 * 1e-3 underflows), small negative, ordinary


def test_one_float16_adam_step_writes_nan_where_the_gradient_is_zero_and_inf_where_it_is_small_torch():
    torch = pytest.importorskip("torch")
    for eps, expected in [(1e-8, [math.nan, -math.inf, math.inf, "finite"]), (1e-4, ["finite"] * 4)]:
        weight = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
        optimizer = torch.optim.Adam([weight], lr=1e-3, eps=eps)
        weight.grad = torch.tensor(GRADIENTS, dtype=torch.float16)
        optimizer.step()
        assert optimizer.state[weight]["exp_avg_sq"].dtype == torch.float16
        assert _pattern(weight.detach().float().tolist()) == _pattern(expected), (eps, weight)


def test_one_float16_adam_step_writes_nan_and_inf_keras_and_the_mixed_policy_keeps_float32_variables():
    pytest.importorskip("tensorflow")
    from nanlab.frameworks.tensorflow.loop import keras, tf

    for eps, expected in [(1e-8, [math.nan, -math.inf, math.inf, "finite"]), (1e-4, ["finite"] * 4)]:
        weight = tf.Variable(tf.ones(4, tf.float16))
        keras.optimizers.Adam(1e-3, epsilon=eps).apply([tf.constant(GRADIENTS, tf.float16)], [weight])
        assert _pattern(weight.numpy().astype(np.float32).tolist()) == _pattern(expected), (eps, weight)
    training = training_of(EPSILON, "tensorflow", "float32-master-weights")
    dense = training.model.layers[0]
    assert (dense.compute_dtype, dense.variable_dtype) == ("float16", "float32")
    assert {v.dtype for v in training.model.trainable_variables} == {"float32"}


def test_float32_master_weights_keep_adams_state_in_float32_torch():
    torch = pytest.importorskip("torch")
    training = training_of(EPSILON, "torch", "float32-master-weights")
    get_framework("torch").loop.train(training, 1)
    states = [training.optimizer.state[p] for p in training.model.parameters()]
    assert {s["exp_avg_sq"].dtype for s in states} == {torch.float32}
    assert training.optimizer.param_groups[0]["eps"] == 1e-8  # the same eps, now representable


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_the_float16_adam_run_is_finite_at_step_0_and_nan_from_step_1(framework):
    for seed in range(3):
        run = nanlab.reproduce(EPSILON, framework, device="cpu", seed=seed)
        assert run.first_nonfinite_step == 1 and math.isfinite(run.losses[0]), run.summary()


def _pattern(values):
    return ["nan" if v != v else v if v in (math.inf, -math.inf) else "finite" for v in values]


# -- nanlab.watch, end to end -------------------------------------------------------------------------------------
@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_watch_names_fp16_overflow_in_a_loop_that_goes_on_after_skipped_steps(framework):
    """An AMP loop does not stop at a skipped step: the watch lets a few pass, then names the overflow."""
    training, loop = training_of(OVERFLOW, framework), get_framework(framework).loop
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training):
            for _ in range(OVERFLOW.steps):
                loop.train(training, 1)  # one step per call: the loop's own stop never ends the run
    report = raised.value.report
    assert report.cause == OVERFLOW.id, str(report)
    assert report.dtype == "float16" and report.dtype_max == 65504.0 and report.skipped_in_a_row >= 2
    assert report.cause_notebook == OVERFLOW.notebooks[framework]


def test_watch_names_fp16_overflow_in_another_model_on_other_data_torch():
    """A regression MLP with BatchNorm and Tanh, raw-unit inputs around 5e4, SGD, its own AMP loop."""
    torch = pytest.importorskip("torch")
    from torch import nn

    seed_everything(1, "torch")
    x = torch.randn(64, 8) * 5e4
    y = torch.randn(64, 1)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, nn.functional.mse_loss, scaler=scaler) as watch:
            for _ in range(30):
                optimizer.zero_grad()
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = watch.loss_fn(model(x).float(), y)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
    assert raised.value.report.cause == OVERFLOW.id, str(raised.value.report)


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_watch_names_fp16_overflow_through_the_nanlab_loop(framework):
    """train() stops at the first non-finite loss, so the first skipped step must already count as a fault."""
    training = training_of(OVERFLOW, framework)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training, overflow_patience=1):
            get_framework(framework).loop.train(training, OVERFLOW.steps)
    report = raised.value.report
    assert (report.cause, report.step, report.dtype) == (OVERFLOW.id, 0, "float16"), str(report)


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_watch_names_fp16_adam_epsilon(framework):
    training = training_of(EPSILON, framework)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training):
            get_framework(framework).loop.train(training, EPSILON.steps)
    report = raised.value.report
    assert report.cause == EPSILON.id, str(report)
    assert report.phase == "optimizer update" and report.step == 0
