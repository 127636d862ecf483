"""The Keras watch under mixed precision (``mixed_float16`` with a LossScaleOptimizer) and with labels that only
turn into NaN on GPU or under XLA: skipped steps are history, persistent overflow and bad labels are reports."""
import numpy as np
import pytest

pytest.importorskip("tensorflow")
import nanlab  # noqa: E402
from nanlab.frameworks.tensorflow.backend import keras, tf  # noqa: E402

BATCH, STEPS = 16, 16


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def wide_model(stddev: float):
    """A float16 layer `wide` (its activations reach |x| ~ 6e5 with stddev 800 and inputs of scale 50) and a
    float32 head, as the Keras mixed-precision guide writes it."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((20,)),
        keras.layers.Dense(64, activation="relu", name="wide",
                           kernel_initializer=keras.initializers.RandomNormal(stddev=stddev)),
        keras.layers.Dense(4, name="head", dtype="float32")])


def data(input_scale: float):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(BATCH * STEPS, 20)) * input_scale).astype(np.float32)
    return x, rng.integers(0, 4, BATCH * STEPS)


def sparse_ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_fit_records_isolated_overflows_that_the_loss_scaler_skips(mixed_float16):
    model = wide_model(0.2)
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.05), initial_scale=2.0**24),
                  loss=sparse_ce())
    watch = nanlab.watch(model)
    x, y = data(1.0)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[watch])
    skipped = watch.history.skipped_steps
    assert 0 < len(skipped) < watch.policy.overflow_patience and skipped == list(range(len(skipped)))
    assert watch.step == STEPS and watch.report is None
    assert len(watch.history.losses) == len(watch.history.grad_norms) == STEPS - len(skipped)
    assert all(np.isfinite(watch.history.losses)) and all(np.isfinite(watch.history.grad_norms))
    scales = watch.history.loss_scales
    assert len(scales) == STEPS and scales[:len(skipped)] == [2.0**23 / 2**i for i in range(len(skipped))]
    assert scales[-1] == scales[len(skipped)]  # halved once per skipped step, then steady
    assert max(watch.history.grad_norms) < 100, "gradient norms are unscaled (not multiplied by the loss scale)"


@pytest.mark.parametrize("patience", [10, 4])
def test_fit_raises_on_persistent_fp16_overflow_naming_layer_op_and_range(mixed_float16, patience):
    model = wide_model(800.0)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=sparse_ce())
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    watch = nanlab.watch(model, overflow_patience=patience)
    x, y = data(50.0)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[watch])
    report = raised.value.report
    assert watch.history.skipped_steps == list(range(patience)) and report.step == patience - 1
    assert (report.phase, report.module, report.op) == ("forward", "wide", "matmul")
    assert (report.dtype, report.dtype_max) == ("float16", 65504.0)
    assert report.max_abs > 65504.0, "the layer's float32 magnitude, past float16's range"
    assert report.skipped_in_a_row == patience and report.loss_scale == watch.history.loss_scales[-1]
    assert report.loss_scale == 32768.0 / 2**patience
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_fit_raises_when_the_loss_scale_collapses_below_its_minimum(mixed_float16):
    model = wide_model(800.0)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=sparse_ce())
    watch = nanlab.watch(model, overflow_patience=100, min_loss_scale=1000.0)
    x, y = data(50.0)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[watch])
    assert raised.value.report.loss_scale == 512.0 and raised.value.report.skipped_in_a_row == 6


def test_gradient_tape_loop_under_mixed_precision(mixed_float16):
    model = wide_model(800.0)
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.01))
    x, y = data(50.0)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, sparse_ce()) as watch:

            @tf.function
            def train_step(x, y):
                with tf.GradientTape() as tape:
                    loss = watch.loss_fn(y, model(x, training=True))
                    scaled = optimizer.scale_loss(loss)
                optimizer.apply(tape.gradient(scaled, model.trainable_variables), model.trainable_variables)

            for step in range(STEPS):
                batch = tf.constant(x[step * BATCH:(step + 1) * BATCH]), tf.constant(y[step * BATCH:(step + 1) * BATCH])
                with watch.checked_step(*batch):
                    train_step(*batch)
    report = raised.value.report
    assert watch.history.skipped_steps == list(range(10)) and report.step == 9
    assert (report.module, report.dtype, report.skipped_in_a_row) == ("wide", "float16", 10)
    assert report.max_abs > report.dtype_max


def test_xla_returns_nan_for_an_out_of_range_label_and_the_watch_names_it():
    """XLA (jit_compile=True) behaves like a GPU here: label 8000 of 5 classes gives NaN, where CPU raises."""
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 20)).astype(np.float32)
    y = np.zeros(64, np.int64)
    y[37] = 8000

    def model(jit_compile):
        keras.utils.set_random_seed(0)
        net = keras.Sequential([keras.Input((20,)), keras.layers.Dense(5)])
        net.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce(), jit_compile=jit_compile)
        return net

    plain = model(True).fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    assert np.isnan(plain.history["loss"][-1]), "measured: XLA gives NaN, no error"
    with pytest.raises(tf.errors.InvalidArgumentError):
        model(False).fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)

    for jit_compile in (True, False):
        net = model(jit_compile)
        watch = nanlab.watch(net)
        with pytest.raises(nanlab.NonFiniteError) as raised:
            net.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, callbacks=[watch])
        report = raised.value.report
        assert (report.step, report.phase, report.samples) == (1, "data", [5]), str(report)
        assert report.label_problem and "8000" in report.label_problem and report.cause == "huge-labels"
        assert all(np.isfinite(w).all() for w in net.get_weights())


class HomeMadeSoftplus(keras.layers.Layer):
    def call(self, x):
        return tf.math.log(1.0 + tf.exp(x))


def test_the_range_is_measured_at_the_op_not_the_layer_output():
    """float16's exp overflows past x = 11.1: the layer's output (about x) stays small in float32, the op's does
    not, and the report gives the op's float32 magnitude."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(16, name="hidden", dtype="mixed_float16"),
                              HomeMadeSoftplus(name="softplus", dtype="mixed_float16"),
                              keras.layers.Dense(2, name="head", dtype="float32")])
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)), loss=sparse_ce())
    x = np.random.default_rng(0).normal(size=(BATCH * STEPS, 5)).astype(np.float32) * 8
    y = (x[:, 1] + x[:, 2] > 0).astype(np.int64)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[nanlab.watch(model)])
    report = raised.value.report
    assert (report.module, report.op, report.value, report.dtype) == ("softplus", "exp", "inf", "float16")
    largest_input = report.op_inputs[0].max_abs
    assert 11.1 < largest_input < 88.7, "past float16's exp range, far inside float32's"
    assert report.max_abs == pytest.approx(np.exp(largest_input), rel=0.05) and report.max_abs > 65504.0


def test_a_bad_label_under_a_loss_scaler_holds_back_the_update_and_keeps_the_scale(mixed_float16):
    """Under a LossScaleOptimizer the watch makes the scaler skip the step itself; the scale it then lowers is put
    back, so the weights, the step count and the scale are those the bad step began with."""
    model = wide_model(0.2)
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.05)), loss=sparse_ce())
    x, y = data(1.0)
    y[2 * BATCH + 3] = 9  # 4 classes
    watch = nanlab.watch(model)
    before = {}

    class Snapshot(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                before["weights"] = [w.copy() for w in self.model.get_weights()]
                before["scale"] = float(self.model.optimizer.dynamic_scale)

    with pytest.raises(nanlab.NonFiniteError) as raised:
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[watch, Snapshot()])
    report = raised.value.report
    assert (report.step, report.phase, report.samples) == (2, "data", [3]) and "9" in report.label_problem
    assert watch.history.skipped_steps == [] and int(model.optimizer.iterations) == 2
    assert float(model.optimizer.dynamic_scale) == before["scale"] == 32768.0
    for now, then in zip(model.get_weights(), before["weights"]):
        np.testing.assert_array_equal(now, then)
