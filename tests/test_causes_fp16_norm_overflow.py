"""fp16-norm-overflow: the numbers its notebooks state (torch 2.13 / TF 2.21 / Keras 3 on CPU), its rule on built
evidence beside fp16-overflow's, and nanlab.watch naming it on the recipe and on programs written differently (a
convolutional net in a user loop under autocast; Keras fit; a GradientTape loop over a wide two-pass LayerNorm)."""
import math

import numpy as np
import pytest

import nanlab
from nanlab.diagnosis import DIRECT, rank
from nanlab.frameworks import get_framework
from nanlab.report import NonFiniteReport
from nanlab.seeding import seed_everything
from nanlab.watching.conclude import conclude
from nanlab.watching.vocabulary import InputStats, OpFamily

CAUSE = nanlab.get_cause("fp16-norm-overflow")
FRAMEWORKS = ("torch", "tensorflow")


def training_of(framework, setting="broken", seed=0):
    seed_everything(seed, framework)
    return CAUSE.recipe(framework).SETTINGS[setting](seed=seed, device="cpu")


def stats(max_abs: float, dtype: str = "float16", minimum: float | None = None, negatives: int = 8) -> InputStats:
    """One finite input of the failing op whose largest magnitude is ``max_abs``."""
    low = -max_abs if minimum is None else minimum
    return InputStats(dtype, size=64, negatives=negatives if low < 0 else 0, min=low, max=max_abs, min_abs=0.5,
                      max_abs=max_abs)


# -- the cause's facts and settings -------------------------------------------------------------------------------
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_recipe_settings_are_the_broken_setting_and_the_fixes(framework):
    assert list(CAUSE.recipe(framework).SETTINGS) == ["broken", *CAUSE.fix_ids]


def test_wrong_fixes_are_the_measured_ones():
    assert [(fix.id, fix.still_nonfinite) for fix in CAUSE.fixes if fix.hides_problem] == [
        ("larger-eps", True), ("clamp-activations", True)]
    assert CAUSE.number == 19 and CAUSE.frameworks == FRAMEWORKS
    assert CAUSE.notebooks == {"torch": "notebooks/pytorch/19-fp16-norm-overflow.ipynb",
                               "tensorflow": "notebooks/tensorflow/19-fp16-norm-overflow.ipynb"}


def test_the_readings_are_float16_of_a_few_hundred_kelvin():
    data = nanlab.causes.fp16_norm_overflow.make_data(0)
    assert data.x_train.dtype == np.float16 and data.x_eval.dtype == np.float16
    assert 200 < data.x_train.min() and data.x_train.max() < 450  # far inside float16's 65504
    row_means = data.x_train.astype(np.float32).mean(axis=1)
    assert row_means.min() > 256  # so E[x]**2 and E[x**2] are both past 65504 in every row: inf - inf


# -- the mechanism, PyTorch ---------------------------------------------------------------------------------------
def test_a_square_passes_float16_past_256_while_the_value_does_not(torch):
    assert math.isinf((torch.tensor([300.0], dtype=torch.float16) ** 2).item())
    assert (torch.tensor([255.0], dtype=torch.float16) ** 2).item() == 65024.0
    assert math.isclose(math.sqrt(torch.finfo(torch.float16).max), 255.94, abs_tol=0.01)
    assert math.isfinite((torch.tensor([300.0], dtype=torch.bfloat16) ** 2).item())


def _rms_norm(torch, x, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # T5LayerNorm without its float32 cast


def test_an_rms_norm_in_float16_zeroes_its_rows_and_their_gradients_instead_of_nan(torch):
    """rsqrt(inf) = 0: no NaN, the rows and their gradients are exactly 0; the same in float32 is fine."""
    torch.manual_seed(0)
    x = (torch.randn(4, 16) * 300).half().requires_grad_()
    out = _rms_norm(torch, x)
    assert torch.isinf(x.detach().pow(2).mean(-1)).all()  # the statistic overflowed
    assert torch.isfinite(out).all() and (out == 0).all()
    (out.float() * torch.randn(4, 16)).sum().backward()
    assert (x.grad == 0).all()
    out32 = _rms_norm(torch, x.detach().float())
    assert torch.isfinite(out32).all() and math.isclose(out32.pow(2).mean().item(), 1.0, rel_tol=1e-4)


def test_the_one_pass_layer_norm_in_float16_is_nan_and_eps_or_a_clamp_do_not_help(torch):
    recipe = nanlab.get_cause("fp16-norm-overflow").recipe("torch")
    x = torch.tensor([[290.0, 310.0, 305.0, 295.0]], dtype=torch.float16)
    assert torch.isnan(recipe.layer_norm_statistics(x, 1e-5)).all()  # inf - inf
    assert torch.isnan(recipe.layer_norm_statistics(x, 1.0)).all()  # nan + eps
    assert torch.equal(x.clamp(-64504.0, 64504.0), x)  # T5's clamp: a no-op here
    fixed = recipe.layer_norm_statistics(x.float(), 1e-5)
    assert torch.allclose(fixed, torch.tensor([[-1.265, 1.265, 0.632, -0.632]]), atol=1e-3)  # std 7.9 K


def test_cpu_autocast_leaves_the_hand_written_statistics_in_float16_and_the_framework_norms_are_finite(torch):
    torch.manual_seed(0)
    x = (300 + 20 * torch.randn(8, 20)).half()
    with torch.autocast("cpu", dtype=torch.float16):
        h = torch.nn.Linear(20, 20)(x.float())
        assert h.dtype == torch.float16  # linear is on CPU autocast's float16 list
        assert (h * h).dtype == h.pow(2).dtype == (h * h).mean(-1).dtype == torch.float16  # the rest keep it
        layer_norm = torch.nn.LayerNorm(20)(x)
        assert layer_norm.dtype == torch.float16 and torch.isfinite(layer_norm).all()  # float32 statistics inside
    for norm in (torch.nn.LayerNorm(20), torch.nn.RMSNorm(20, elementwise_affine=False)):
        out = norm(x)
        assert out.dtype == torch.float16 and torch.isfinite(out).all(), type(norm).__name__
    assert torch.allclose(torch.nn.LayerNorm(20)(x).float(), torch.nn.LayerNorm(20)(x.float()), atol=2e-2)


# -- the mechanism, Keras -----------------------------------------------------------------------------------------
def test_keras_custom_norm_computes_in_float16_and_the_keras_norm_layers_in_float32(tf, keras):
    x = tf.constant(np.random.default_rng(0).normal(0, 300, (4, 16)), tf.float16)

    class RMSNorm(keras.layers.Layer):
        def call(self, h):
            return h * tf.math.rsqrt(tf.reduce_mean(tf.square(h), axis=-1, keepdims=True) + 1e-6)

    custom = RMSNorm(dtype="mixed_float16")
    assert (custom.compute_dtype, custom.variable_dtype) == ("float16", "float32")
    out = custom(x).numpy()
    assert np.isfinite(out).all() and (out == 0).all()  # rsqrt(inf) = 0: the rows are zeroed, no NaN
    for layer in (keras.layers.LayerNormalization(dtype="mixed_float16"),
                  keras.layers.RMSNormalization(dtype="mixed_float16")):
        out = layer(x)
        assert out.dtype == tf.float16 and np.isfinite(out.numpy()).all() and np.abs(out.numpy()).max() > 0.5
    recipe = CAUSE.recipe("tensorflow")
    readings = tf.constant([[290.0, 310.0, 305.0, 295.0]], tf.float16)
    assert np.isnan(recipe.layer_norm_statistics(readings, 1e-5).numpy()).all()
    assert np.isnan(recipe.layer_norm_statistics(readings, 1.0).numpy()).all()


def test_tensorflow_reductions_accumulate_float16_in_float16_and_moments_upcasts(tf):
    """TensorFlow's CPU mean of float16 overflows in its sum (64 x 2000 = 128000), torch's does not; tf.nn.moments
    casts float16 to float32 first."""
    torch = pytest.importorskip("torch")
    assert np.isinf(tf.reduce_mean(tf.fill((64,), tf.constant(2000.0, tf.float16))).numpy())
    assert torch.full((64,), 2000.0, dtype=torch.float16).mean().item() == 2000.0
    readings = tf.constant(np.random.default_rng(0).normal(300, 20, (2, 64)), tf.float16)
    mean, variance = tf.nn.moments(readings, axes=[-1])
    assert mean.dtype == tf.float16 and np.isfinite(variance.numpy()).all()
    assert np.isinf(tf.math.reduce_variance(tf.constant(np.full((2, 64), 300.0) + np.arange(64) * 20,
                                                        tf.float16), -1).numpy()).all()


# -- the rule, on the evidence the watches fill -------------------------------------------------------------------
SQUARE_TORCH = dict(phase="forward", module="norm", op="mul", op_family=OpFamily.ELEMENTWISE, dtype="float16",
                    dtype_max=65504.0, max_abs=1.2e5, value="inf", op_inputs=[stats(350.0), stats(350.0)])


@pytest.mark.parametrize("fields", [
    SQUARE_TORCH,  # x * x, the recipe in torch
    dict(phase="forward", module="norm", op="square", op_family=OpFamily.POW, dtype="float16", dtype_max=65504.0,
         max_abs=1.2e5, value="inf", op_inputs=[stats(350.0)]),  # tf.square, the recipe in Keras
    dict(phase="forward", op="pow", op_family=OpFamily.POW, dtype="float16", value="inf",
         op_inputs=[stats(300.0)]),  # no recomputed magnitude, no dtype_max: the vocabulary's limit
    # a mean of squares (each below the limit) whose float16 sum overflowed (TensorFlow's reduce_mean)
    dict(phase="forward", op="mean", op_family=OpFamily.REDUCE, dtype="float16", dtype_max=65504.0, value="inf",
         op_inputs=[stats(9000.0, minimum=0.0)]),
    # a variance past 65504 (torch.var in float16), and a fused norm whose one-pass variance is inf - inf
    dict(phase="forward", op="var", op_family=OpFamily.STATISTIC, dtype="float16", value="inf",
         op_inputs=[stats(400.0)]),
    dict(phase="forward", op="native_layer_norm", op_family=OpFamily.NORMALIZATION, dtype="float16", value="nan",
         max_abs=3.0, op_inputs=[stats(400.0)]),
])
def test_the_rule_names_a_statistic_that_overflowed_on_values_float16_holds(fields):
    report = conclude(NonFiniteReport("torch", step=0, **fields))
    assert report.cause == CAUSE.id, report.cause_reason
    assert DIRECT < rank(report)[0].specificity < DIRECT + 0.15
    assert report.runner_up in (None, "fp16-overflow"), report.runner_up


def test_the_recipes_evidence_names_fp16_overflow_as_the_close_runner_up():
    report = conclude(NonFiniteReport("torch", step=0, **SQUARE_TORCH))
    assert (report.cause, report.runner_up) == (CAUSE.id, "fp16-overflow")
    assert "350" in report.cause_reason and "float32" in report.cause_reason


@pytest.mark.parametrize("fields, cause", [
    # an input already past 65504 (raw units cast to float16): fp16-overflow's own run
    (dict(phase="forward", module="dense", op="cast", op_family=OpFamily.OTHER, dtype="float16", dtype_max=65504.0,
          max_abs=1.03e5, value="-inf", op_inputs=[stats(1.03e5, dtype="float32")]), "fp16-overflow"),
    (dict(phase="forward", op="pow", op_family=OpFamily.POW, dtype="float16", value="inf",
          op_inputs=[InputStats("float16", size=4, nonfinite=1, min=1.0, max=2.0, min_abs=1.0, max_abs=2.0)]),
     "fp16-overflow"),
    # a matmul (attention logits, a linear layer) of values float16 holds: not a statistic
    (dict(phase="forward", op="linear", op_family=OpFamily.MATMUL, dtype="float16", dtype_max=65504.0, max_abs=2e5,
          value="inf", op_inputs=[stats(300.0), stats(2.0)]), "fp16-overflow"),
    # a product of two different tensors, and x + x (identical inputs past half the limit): not a square
    (dict(phase="forward", op="mul", op_family=OpFamily.ELEMENTWISE, dtype="float16", max_abs=9e4, value="inf",
          op_inputs=[stats(300.0), stats(300.0, minimum=-120.0)]), "fp16-overflow"),
    (dict(phase="forward", op="add", op_family=OpFamily.ELEMENTWISE, dtype="float16", max_abs=8e4, value="inf",
          op_inputs=[stats(4e4), stats(4e4)]), "fp16-overflow"),
    # a square in the loss: an MSE computed in float16
    (dict(phase="loss", op="pow", op_family=OpFamily.POW, dtype="float16", max_abs=1e5, value="inf",
          op_inputs=[stats(320.0)]), "fp16-overflow"),
    # values below 256 whose square fits: a NaN there is not this overflow
    (dict(phase="forward", op="pow", op_family=OpFamily.POW, dtype="float16", value="nan", max_abs=2.0,
          op_inputs=[stats(200.0)]), None),
    # a reduction with negative inputs is not a sum of squares
    (dict(phase="forward", op="sum", op_family=OpFamily.REDUCE, dtype="float16", value="inf",
          op_inputs=[stats(9000.0)]), "fp16-overflow"),
    # rsqrt of an exact zero (zero-norm), in float32 and bfloat16 squares do not overflow
    (dict(phase="forward", op="rsqrt", op_family=OpFamily.RSQRT, dtype="float16", value="inf",
          op_inputs=[InputStats("float16", size=4, zeros=1, min=0.0, max=3.0, min_abs=0.0, max_abs=3.0)]),
     "zero-norm"),
    (dict(phase="forward", op="pow", op_family=OpFamily.POW, dtype="bfloat16", value="inf",
          op_inputs=[stats(1e20, dtype="bfloat16")]), None),
    (dict(phase="forward", op="pow", op_family=OpFamily.POW, value="inf", op_inputs=[stats(2e19, dtype="float32")]),
     None),
])
def test_the_rule_leaves_other_evidence_to_other_rules(fields, cause):
    report = conclude(NonFiniteReport("torch", step=0, **fields))
    assert CAUSE.id not in report.verdicts, report.cause_reason
    if cause is not None:
        assert report.cause == cause, report.cause_reason


# -- nanlab.watch, end to end ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("framework, op, family", [("torch", "mul", OpFamily.ELEMENTWISE),
                                                   ("tensorflow", "square", OpFamily.POW)])
def test_the_watch_names_the_cause_of_its_broken_run(framework, op, family):
    training = training_of(framework)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training):
            get_framework(framework).loop.train(training, CAUSE.steps)
    report = raised.value.report
    assert (report.cause, report.runner_up) == (CAUSE.id, "fp16-overflow"), str(report)
    assert (report.step, report.phase, report.op, report.op_family, report.dtype) == (0, "forward", op, family,
                                                                                      "float16")
    assert report.value == "inf" and len(report.samples) == report.batch_size
    assert all(entry.max_abs < 500 for entry in report.op_inputs)  # the inputs are ordinary float16 values
    assert report.step == nanlab.reproduce(CAUSE, framework, "cpu", seed=0).first_nonfinite_step
    assert report.cause_notebook == CAUSE.notebooks[framework]


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("setting", ["larger-eps", "clamp-activations"])
def test_the_wrong_fixes_fail_the_same_way(framework, setting):
    training = training_of(framework, setting)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training):
            get_framework(framework).loop.train(training, CAUSE.steps)
    assert raised.value.report.cause == CAUSE.id and raised.value.report.step == 0


def test_a_convolutional_net_with_a_hand_written_instance_norm_in_a_user_loop_torch(torch):
    """Not the recipe: raw ADC counts (~500) through a Conv1d under float16 autocast, an instance norm over time
    written with ``pow`` (one-pass variance), SGD, the user's own loop."""
    nn = torch.nn

    class InstanceNorm(nn.Module):
        def forward(self, h):
            mean = h.mean(dim=-1, keepdim=True)
            return (h - mean) / torch.sqrt(h.pow(2).mean(dim=-1, keepdim=True) - mean.pow(2) + 1e-5)

    model = nn.Sequential(nn.Conv1d(1, 8, 5), InstanceNorm(), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                          nn.Linear(8, 2))
    torch.manual_seed(3)
    signals = 500 + 40 * torch.randn(16, 1, 64)
    labels = torch.randint(0, 2, (16,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, nn.functional.cross_entropy) as watch:
            for _ in range(5):
                optimizer.zero_grad()
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = watch.loss_fn(model(signals).float(), labels)
                loss.backward()
                optimizer.step()
    report = raised.value.report
    assert (report.cause, report.phase, report.module, report.op, report.op_family) == (
        CAUSE.id, "forward", "1", "pow", OpFamily.POW), str(report)
    assert report.step == 0 and report.dtype == "float16"


def test_a_t5_style_rms_norm_in_float16_stays_finite_and_stops_learning_torch(torch):
    """The quiet twin: T5LayerNorm without its float32 cast raises nothing; the rows are zeroed, the first layer
    gets no gradient, the loss does not move."""
    nn = torch.nn

    class T5LayerNorm(nn.Module):
        def __init__(self, size):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(size))

        def forward(self, h):
            return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), T5LayerNorm(16), nn.Linear(16, 2))
    x, y = torch.randn(32, 8) * 2000, torch.randint(0, 2, (32,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    with nanlab.watch(model, optimizer, nn.functional.cross_entropy) as watch:
        for _ in range(10):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = watch.loss_fn(model(x).float(), y)
            loss.backward()
            assert (model[0].weight.grad == 0).all()  # every row zeroed: nothing reaches the first layer
            optimizer.step()
            losses.append(loss.item())
    assert all(math.isfinite(loss) for loss in losses) and min(losses) > 0.6


def _keras_fit_report(keras, model, x, y):
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(nanlab.NonFiniteError) as raised:
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[nanlab.watch(model)])
    return raised.value.report


def test_keras_fit_with_a_standardising_layer_written_with_pow(tf, keras):
    """Not the recipe: model.fit, a Dense + ReLU on raw inputs (~3000) whose outputs a custom layer standardises
    with ``x ** 2`` (one-pass variance), every layer mixed_float16."""

    class Standardise(keras.layers.Layer):
        def call(self, h):
            mean = tf.reduce_mean(h, axis=-1, keepdims=True)
            variance = tf.reduce_mean(h ** 2, axis=-1, keepdims=True) - mean ** 2
            return (h - mean) / tf.sqrt(variance + 1e-3)

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(32, 6)) * 3000).astype(np.float32)
    y = rng.integers(0, 3, size=32)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(32, activation="relu", dtype="mixed_float16"),
                              Standardise(dtype="mixed_float16", name="standardise"),
                              keras.layers.Dense(3, dtype="mixed_float16"),
                              keras.layers.Activation("linear", dtype="float32")])
    report = _keras_fit_report(keras, model, x, y)
    assert (report.cause, report.phase, report.module, report.op_family, report.dtype) == (
        CAUSE.id, "forward", "standardise", OpFamily.POW, "float16"), str(report)


def test_a_wide_two_pass_layer_norm_overflows_in_tensorflows_float16_mean(tf, keras):
    """A GradientTape loop, 512 readings of ~300 per sample, a two-pass LayerNorm: torch's float16 mean of them is
    300, TensorFlow's sums in float16 past 65504, so the mean itself is inf (named from a reduction of non-negative
    values)."""
    torch = pytest.importorskip("torch")

    def two_pass(h):
        mean = tf.reduce_mean(h, axis=-1, keepdims=True)
        centred = h - mean
        return centred * tf.math.rsqrt(tf.reduce_mean(tf.square(centred), axis=-1, keepdims=True) + 1e-5)

    class Norm(keras.layers.Layer):
        def call(self, h):
            return two_pass(h)

    readings = np.random.default_rng(0).normal(300, 10, (16, 512)).astype(np.float16)
    torch_mean = torch.tensor(readings).mean(-1)
    assert torch.isfinite(torch_mean).all() and abs(torch_mean.float().mean().item() - 300) < 1
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((512,), dtype="float16"), Norm(dtype="mixed_float16", name="norm"),
                              keras.layers.Dense(2, dtype="mixed_float16"),
                              keras.layers.Activation("linear", dtype="float32")])
    optimizer = keras.optimizers.SGD(0.01)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x, labels = tf.constant(readings), tf.constant(np.arange(16) % 2)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, loss_fn) as watch:
            for _ in range(3):
                with watch.checked_step(x, labels):
                    with tf.GradientTape() as tape:
                        loss = watch.loss_fn(labels, model(x, training=True))
                    optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    report = raised.value.report
    assert (report.cause, report.phase, report.module, report.op_family) == (
        CAUSE.id, "forward", "norm", OpFamily.REDUCE), str(report)
    assert "non-negative" in report.cause_reason


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_recipes_quiet_twin_is_finite_under_the_watch_and_learns_only_with_float32_statistics(framework):
    """The notebooks' RMSNorm twin: float16 statistics give finite losses, no report and chance accuracy; float32
    statistics learn."""
    loop = get_framework(framework).loop
    outcomes = {}
    for float32_statistics in (False, True):
        seed_everything(0, framework)
        training = CAUSE.recipe(framework).rms_norm_training(0, "cpu", float32_statistics=float32_statistics)
        with nanlab.watch(training):
            history = loop.train(training, CAUSE.steps)
        outcomes[float32_statistics] = (len(history.losses), training.evaluate(training.model))
    assert outcomes[False][0] == outcomes[True][0] == CAUSE.steps
    assert outcomes[False][1] < 0.35 < CAUSE.pass_score <= outcomes[True][1], outcomes
