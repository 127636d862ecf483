"""The Keras watch: model.fit and GradientTape loops, catalogue causes, models outside the catalogue, and training
unchanged by watching."""
import json
import math
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow")
import nanlab  # noqa: E402
from nanlab.frameworks.tensorflow import loop as keras_loop  # noqa: E402
from nanlab.frameworks.tensorflow.loop import keras, tf  # noqa: E402
from nanlab.seeding import seed_everything  # noqa: E402

BATCH = 16


@pytest.mark.parametrize("cause", [c for c in nanlab.list_causes() if "tensorflow" in c.frameworks],
                         ids=lambda c: c.id)
def test_names_the_cause_of_every_catalogue_broken_run(cause):
    plain = nanlab.reproduce(cause, "tensorflow", device="cpu", seed=0)
    seed_everything(0, "tensorflow")
    training = cause.recipe("tensorflow").SETTINGS["broken"](seed=0, device="cpu")
    with pytest.raises(nanlab.NonFiniteError) as raised:
        # The loop stops at its first non-finite step, so a loss scaler's first skip must already count.
        with nanlab.watch(training, overflow_patience=1):
            keras_loop.train(training, cause.steps)
    report = raised.value.report
    assert report.cause == cause.id, str(report)
    assert report.cause_notebook == cause.notebooks["tensorflow"]
    assert report.phase == "data" or (report.module and report.op), "localised to a module and op"
    if plain.first_nonfinite_step is not None:
        # A bad update shows in the loop as the next step's loss; the report names the step that made it.
        update = report.phase == "optimizer update"
        assert report.step == plain.first_nonfinite_step - update


def mlp(seed, hidden=32):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((20,)), keras.layers.Dense(hidden, activation="relu"),
                             keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(4)])


def blobs(seed=0):
    data = nanlab.causes.high_learning_rate.make_data(seed)
    return data.x_train[:512], data.y_train[:512]


def fit(model, lr, callbacks, steps=12, jit_compile=False):
    x, y = blobs()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), jit_compile=jit_compile,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model.fit(x[:steps * 32], y[:steps * 32], batch_size=32, epochs=1, shuffle=False, verbose=0,
                     callbacks=callbacks)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["tf.function", "xla"])
def test_fit_localises_a_high_learning_rate_and_restores_the_weights(jit_compile):
    model = mlp(0)
    watch = nanlab.watch(model)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        fit(model, 20.0, [watch], jit_compile=jit_compile)
    report = raised.value.report
    assert report.framework == "tensorflow" and report.step == len(watch.history.losses) > 2
    assert report.phase in ("forward", "loss") and report.cause == "high-learning-rate"
    assert all(np.isfinite(w).all() for w in model.get_weights())  # the weights from before the bad step
    assert "train_step" not in model.__dict__  # fit without the watch is untouched afterwards


def test_fit_is_bit_identical_with_and_without_the_callback():
    plain = fit(mlp(1), 0.05, [])
    watch = nanlab.watch(mlp(1))
    watched = fit(watch.watched, 0.05, [watch])
    assert watched.history["loss"] == plain.history["loss"]
    assert len(watch.history.losses) == 12 and all(math.isfinite(norm) for norm in watch.history.grad_norms)


class ExpActivation(keras.layers.Layer):
    def call(self, x):
        return tf.exp(x) - 1.0


def test_gradient_tape_loop_localises_exp_overflow_in_a_custom_layer():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, kernel_initializer=keras.initializers.
                                                                    RandomNormal(stddev=40.0)),
                              ExpActivation(name="exp_act"), keras.layers.Dense(2)])
    optimizer = keras.optimizers.SGD(0.1)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x = tf.random.normal((BATCH, 4), seed=1)
    y = tf.zeros(BATCH, tf.int64)

    @tf.function  # the step is compiled; the watch replays it eagerly
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, loss_fn) as watch:
            for _ in range(3):
                with watch.checked_step(x, y):
                    train_step(x, y)
    report = raised.value.report
    assert (report.step, report.phase, report.module, report.op, report.value) == (0, "forward", "exp_act", "exp",
                                                                                   "inf")
    assert report.samples and report.parameter is not None


class MaskedAttention(keras.layers.Layer):
    """Self-attention whose mask can hide every key from a query: softmax over all -inf is NaN."""

    def build(self, input_shape):
        self.qkv = keras.layers.Dense(3 * input_shape[-1])

    def call(self, x, mask):
        q, k, v = tf.split(self.qkv(x), 3, axis=-1)
        scores = tf.where(mask, tf.matmul(q, k, transpose_b=True), -np.inf)
        return tf.matmul(tf.nn.softmax(scores, axis=-1), v)


def test_gradient_tape_loop_localises_a_fully_masked_attention_row():
    keras.utils.set_random_seed(0)
    x_in, mask_in = keras.Input((5, 8)), keras.Input((5, 5), dtype="bool")
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(MaskedAttention(name="attn")(x_in, mask_in)))
    model = keras.Model([x_in, mask_in], out)
    optimizer = keras.optimizers.SGD(0.1)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x = tf.random.normal((BATCH, 5, 8), seed=2)
    mask = np.ones((BATCH, 5, 5), bool)
    mask[9, 2] = False
    inputs, y = [x, tf.constant(mask)], tf.zeros(BATCH, tf.int64)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, loss_fn) as watch:
            with watch.checked_step(inputs, y):
                with tf.GradientTape() as tape:
                    loss = watch.loss_fn(y, model(inputs, training=True))
                grads = tape.gradient(loss, model.trainable_variables)
                optimizer.apply_gradients(zip(grads, model.trainable_variables))
    report = raised.value.report
    assert (report.phase, report.module, report.op) == ("forward", "attn", "softmax")
    assert report.samples == [9]
    assert report.cause == "masked-attention"


@pytest.mark.parametrize("setting", ["broken", "lower-lr"])
def test_keras_loop_is_bit_identical_with_and_without_the_watch(setting):
    recipe = nanlab.get_cause("high-learning-rate").recipe("tensorflow")
    seed_everything(0, "tensorflow")
    plain = keras_loop.train(recipe.SETTINGS[setting](seed=0, device="cpu"), 15)
    seed_everything(0, "tensorflow")
    training = recipe.SETTINGS[setting](seed=0, device="cpu")
    if plain.first_nonfinite_step is None:
        with nanlab.watch(training):
            watched = keras_loop.train(training, 15)
        assert watched.losses == plain.losses and watched.grad_norms == plain.grad_norms
    else:
        watch = nanlab.watch(training)
        with pytest.raises(nanlab.NonFiniteError):
            with watch:
                keras_loop.train(training, 15)
        assert watch.history.losses == pytest.approx(plain.losses[:plain.first_nonfinite_step], rel=1e-6)


def test_names_huge_labels_on_its_regression_cousin():
    cause = nanlab.get_cause("huge-labels")
    seed_everything(0, "tensorflow")
    training = cause.recipe("tensorflow").REGRESSION_SETTINGS["broken"](seed=0, device="cpu")
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training):
            keras_loop.train(training, 100)
    report = raised.value.report
    assert (report.phase, report.module, report.huge_targets) == ("loss", "loss", True)
    assert report.cause == "huge-labels"


def test_one_surface_step_history_report_and_a_json_report():
    model = mlp(0)
    watch = nanlab.watch(model)
    assert (watch.step, watch.report, watch.stopped) == (0, None, False)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        fit(model, 20.0, [watch])
    report = raised.value.report
    assert watch.report is report and watch.step == report.step == len(watch.history.losses)
    assert len(watch.history.grad_norms) == watch.step and watch.history.skipped_steps == []
    assert watch.history.loss_scales == []  # no mixed precision
    assert report.norm_name == "gradient norm" and report.grad_norms == watch.history.grad_norms
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["step"] == report.step
    assert len(str(report)) < 450 and str(report).count(". ") <= 3, str(report)


def test_history_holds_gradient_norms_not_update_norms():
    """For plain SGD the update is lr * gradient, so the recorded norm is the update's divided by lr."""
    model = mlp(1)
    watch = nanlab.watch(model)
    before = [w.copy() for w in model.get_weights()]
    x, y = blobs()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:32], y[:32], batch_size=32, epochs=1, shuffle=False, verbose=0, callbacks=[watch])
    update = math.sqrt(sum(float(np.sum((a.astype(np.float64) - b) ** 2)) for a, b in zip(model.get_weights(),
                                                                                          before)))
    assert watch.history.grad_norms == [pytest.approx(update / 0.05, rel=1e-4)]


def test_policy_keywords_are_checked():
    with pytest.raises(nanlab.NanlabError, match="on_nonfinite"):
        nanlab.watch(mlp(0), on_nonfinite="ignore")
    with pytest.raises(nanlab.NanlabError, match="max_skips"):
        nanlab.watch(mlp(0), max_skips=0)


def test_training_with_the_watch_survives_a_missing_private_api(monkeypatch):
    """The private op-callback API is only needed to localise: without it fit trains, and a NaN still raises."""
    import tensorflow.python.framework as framework_package

    import nanlab.frameworks.tensorflow as tf_package

    monkeypatch.setitem(sys.modules, "tensorflow.python.framework.op_callbacks", None)
    monkeypatch.delattr(framework_package, "op_callbacks")
    for name in ("watch", "replay"):
        monkeypatch.delitem(sys.modules, f"nanlab.frameworks.tensorflow.{name}", raising=False)
        monkeypatch.delattr(tf_package, name, raising=False)
    with pytest.raises(ImportError):
        from tensorflow.python.framework import op_callbacks  # noqa: F401

    healthy = mlp(1)
    watch = nanlab.watch(healthy)  # attaching never needs the private API
    fit(healthy, 0.05, [watch])
    assert watch.step == 12 and all(math.isfinite(loss) for loss in watch.history.losses)

    broken = mlp(0)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        fit(broken, 20.0, [nanlab.watch(broken)])
    report = raised.value.report
    assert report.step > 2 and "Localisation was unavailable" in str(report)
    assert all(np.isfinite(w).all() for w in broken.get_weights())  # still restored to before the bad step


def test_the_gradient_norm_is_exact_past_float32s_sum_of_squares_and_non_finite_with_a_nan():
    """float32 squares overflow past a norm of ~2.6e19: the norm is then summed again in float64."""
    from nanlab.frameworks.tensorflow.watch import global_norm

    huge = [tf.fill([4], 1e30), tf.constant([3.0, 4.0])]
    assert global_norm(huge).numpy() == pytest.approx(2e30, rel=1e-6)
    assert global_norm([tf.constant([3.0, 4.0]), tf.constant([[12.0]])]).numpy() == pytest.approx(13.0)
    assert math.isnan(global_norm([tf.constant([1.0, math.nan])]).numpy())
    assert global_norm([]).numpy() == 0.0
