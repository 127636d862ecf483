"""float8-range: the numbers its notebooks state (torch 2.13 / TF 2.21 on CPU: e4m3fn saturates in torch and turns
NaN in TensorFlow, e5m2 overflows to inf past 61440), its rule on built evidence, and nanlab.watch naming it on the
recipe in both frameworks and on programs written differently (float8 activations inside an MLP: a torch user loop,
a Keras layer in fit)."""
import math

import numpy as np
import pytest

import nanlab
from nanlab.causes.float8_range import E4M3_MAX, E5M2_INF_FROM, E5M2_MAX, make_data
from nanlab.diagnosis import DIRECT, rank
from nanlab.frameworks import get_framework
from nanlab.report import NonFiniteReport
from nanlab.seeding import seed_everything
from nanlab.watching.conclude import conclude
from nanlab.watching.vocabulary import InputStats, OpFamily

CAUSE = nanlab.get_cause("float8-range")
FRAMEWORKS = ("torch", "tensorflow")


def training_of(framework, setting="broken", seed=0):
    seed_everything(seed, framework)
    return CAUSE.recipe(framework).SETTINGS[setting](seed=seed, device="cpu")


def stats(max_abs: float, dtype: str = "float32") -> InputStats:
    return InputStats(dtype, size=640, negatives=30, min=-max_abs / 3, max=max_abs, min_abs=1.0, max_abs=max_abs)


# -- the cause's facts and settings -------------------------------------------------------------------------------
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_recipe_settings_are_the_broken_setting_and_the_fixes(framework):
    assert list(CAUSE.recipe(framework).SETTINGS) == ["broken", *CAUSE.fix_ids]


def test_the_wrong_fix_is_saturation_and_the_data_pass_both_ranges():
    assert [(fix.id, fix.still_nonfinite) for fix in CAUSE.fixes if fix.hides_problem] == [("saturate", False)]
    assert CAUSE.number == 21 and CAUSE.frameworks == FRAMEWORKS
    x = make_data(0).x_train
    assert (x > E4M3_MAX).mean() > 0.9  # e4m3 without a scale keeps almost nothing
    assert 0 < (np.abs(x) >= E5M2_INF_FROM).mean() < 0.01 and x.max() < 1e5


# -- the mechanism ------------------------------------------------------------------------------------------------
def test_torch_e4m3fn_saturates_silently_and_e5m2_overflows(torch):
    values = torch.tensor([448.0, 500.0, 1e6, float("inf")])
    assert values.to(torch.float8_e4m3fn).float().tolist() == [448.0] * 4  # even inf becomes 448
    e5m2 = torch.tensor([E5M2_MAX, 60000.0, E5M2_INF_FROM, 1e5]).to(torch.float8_e5m2).float()
    assert e5m2.tolist()[:2] == [E5M2_MAX, E5M2_MAX] and torch.isinf(e5m2[2:]).all()
    assert torch.isnan(torch.tensor([float("nan")]).to(torch.float8_e4m3fn).float()).all()
    with pytest.raises(RuntimeError, match="not implemented"):
        torch.isfinite(values.to(torch.float8_e4m3fn))
    assert not torch.isnan(values.to(torch.float8_e4m3fn)).any()  # isnan is implemented


def test_tensorflow_e4m3fn_turns_out_of_range_into_nan_and_its_cast_has_no_gradient(tf):
    e4m3, e5m2 = tf.dtypes.experimental.float8_e4m3fn, tf.dtypes.experimental.float8_e5m2
    got = tf.cast(tf.cast(tf.constant([448.0, 460.0, 500.0, 1e6]), e4m3), tf.float32).numpy()
    assert got[:2].tolist() == [448.0, 448.0] and np.isnan(got[2:]).all()
    assert np.isinf(tf.cast(tf.cast(tf.constant([E5M2_INF_FROM]), e5m2), tf.float32).numpy()).all()
    v = tf.Variable(3.0)
    with tf.GradientTape() as tape:
        out = tf.cast(tf.cast(v * 2.0, e5m2), tf.float32)
    assert tape.gradient(out, v) is None  # hence the recipe's straight-through custom gradient
    recipe = CAUSE.recipe("tensorflow")
    with tf.GradientTape() as tape:
        out = recipe.through_float8(v * 2.0, e5m2)
    assert tape.gradient(out, v).numpy() == 2.0


def test_per_tensor_scaling_keeps_every_count_to_a_few_percent(torch):
    recipe = CAUSE.recipe("torch")
    x = torch.tensor(make_data(0).x_train[:32])
    scaled = recipe.to_float8(x, torch.float8_e4m3fn, scaled=True)
    assert torch.isfinite(scaled).all()
    assert ((scaled - x).abs() <= 0.07 * x.abs() + 1.0).all()  # e4m3: 3 mantissa bits, 6.25% at worst
    assert torch.isinf(recipe.to_float8(x * 2, torch.float8_e5m2, scaled=False)).any()


# -- the rule, on the evidence the watches fill -------------------------------------------------------------------
CAST = dict(phase="forward", module="0", module_kind="Float8Linear", op="to", op_family=OpFamily.OTHER,
            dtype="float8_e5m2", value="inf", op_inputs=[stats(7.0e4)])


@pytest.mark.parametrize("fields", [
    CAST,
    dict(CAST, module="float8_dense", op="cast", op_family=OpFamily.OTHER, value="-inf"),  # Keras
    dict(CAST, dtype="float8_e4m3fn", value="nan", op_inputs=[stats(500.0)]),  # TensorFlow's e4m3fn cast
    dict(CAST, phase="backward", op="to", op_family=OpFamily.OTHER, op_inputs=[stats(9.0e4)]),  # a gradient to e5m2
    dict(CAST, op="mul", op_family=OpFamily.ELEMENTWISE, op_inputs=[stats(300.0, "float8_e5m2"),
                                                                    stats(400.0, "float8_e5m2")]),  # a product
])
def test_the_rule_names_a_float8_value_past_its_format(fields):
    report = conclude(NonFiniteReport("torch", step=0, **fields))
    assert report.cause == CAUSE.id, report.cause_reason
    assert rank(report)[0].specificity == pytest.approx(DIRECT + 0.05)
    assert "scale" in report.cause_reason and report.dtype in report.cause_reason


@pytest.mark.parametrize("fields", [
    dict(CAST, dtype="float16", op_inputs=[stats(7.0e4)]),  # float16 is fp16-overflow's
    dict(CAST, op_inputs=[InputStats("float32", size=4, nonfinite=1, max_abs=3.0)]),  # already non-finite
    dict(CAST, value="nan", op_inputs=[stats(3.0)]),  # inside the range: not a range problem
    dict(CAST, phase="data"),
])
def test_the_rule_leaves_other_evidence_to_other_rules(fields):
    assert CAUSE.id not in conclude(NonFiniteReport("torch", step=0, **fields)).verdicts


# -- nanlab.watch, end to end ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("framework, op", [("torch", "to"), ("tensorflow", "cast")])
def test_the_watch_names_the_cause_of_its_broken_run(framework, op):
    training = training_of(framework)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training):
            get_framework(framework).loop.train(training, CAUSE.steps)
    report = raised.value.report
    assert (report.cause, report.phase, report.op, report.dtype) == (CAUSE.id, "forward", op, "float8_e5m2"), \
        str(report)
    assert report.value in ("inf", "-inf") and max(entry.max_abs for entry in report.op_inputs) >= E5M2_INF_FROM
    assert report.step == nanlab.reproduce(CAUSE, framework, "cpu", seed=0).first_nonfinite_step


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_saturation_is_finite_and_silent_and_does_not_learn(framework):
    """Only the 6% of counts below 448 still carry information: the accuracy stays below the bar."""
    training = training_of(framework, "saturate")
    with nanlab.watch(training) as watch:
        history = get_framework(framework).loop.train(training, CAUSE.steps)
    assert watch.report is None and history.first_nonfinite_step is None
    score = training.evaluate(training.model)
    assert score < CAUSE.pass_score and not CAUSE.judge_learning(history.losses, score)


def test_float8_activations_inside_an_mlp_in_a_user_loop_torch(torch):
    """Not the recipe: standardised inputs, a hidden layer whose activations are stored in e5m2 between two
    linear layers; SGD at a rate that lets them grow past 57344 (the user's own loop)."""
    nn = torch.nn

    class StoreE5M2(nn.Module):
        def forward(self, h):
            return h.to(torch.float8_e5m2).float()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), StoreE5M2(), nn.ReLU(), nn.Linear(64, 1))
    x, y = torch.randn(64, 8), torch.randn(64, 1) * 1e4
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, nn.functional.mse_loss) as watch:
            for _ in range(50):
                optimizer.zero_grad()
                loss = watch.loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
    report = raised.value.report
    assert (report.cause, report.dtype) == (CAUSE.id, "float8_e5m2"), str(report)
    assert math.isfinite(report.op_inputs[0].max_abs)


def test_float8_activations_between_keras_layers_in_fit_tensorflow(tf, keras):
    """Not the recipe: a Keras layer that stores the hidden activations in e5m2 between two Dense layers (cast there
    and back with a straight-through gradient, as fake quantisation does), standardised inputs, regression targets
    of order 1e4 and SGD in ``fit``, so the activations grow past 57344 (``callbacks=[nanlab.watch(model)]``)."""
    e5m2 = tf.dtypes.experimental.float8_e5m2

    class StoreE5M2(keras.layers.Layer):
        def call(self, h):
            @tf.custom_gradient
            def stored(v):
                return tf.cast(tf.cast(v, e5m2), v.dtype), lambda upstream: upstream
            return stored(h)

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 8)).astype("float32"), (rng.standard_normal((64, 1)) * 1e4).astype("float32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(64), StoreE5M2(name="store_e5m2"),
                              keras.layers.ReLU(), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    with pytest.raises(nanlab.NonFiniteError) as raised:
        model.fit(x, y, batch_size=64, epochs=50, verbose=0, callbacks=[nanlab.watch(model)])
    report = raised.value.report
    assert (report.cause, report.dtype) == (CAUSE.id, "float8_e5m2"), str(report)
    assert report.module == "store_e5m2" and math.isfinite(report.op_inputs[0].max_abs), str(report)
