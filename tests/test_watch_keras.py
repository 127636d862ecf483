"""The Keras watch: model.fit and GradientTape loops, catalogue causes, models outside the catalogue, and training
unchanged by watching."""
import json
import logging
import math
import sys
from typing import Callable

import numpy as np
import pytest

pytest.importorskip("tensorflow")
import nanlab  # noqa: E402
import nanlab.causes.high_learning_rate  # noqa: E402,F401  (blobs() reads its data)
from nanlab.frameworks.tensorflow import loop as keras_loop  # noqa: E402
from nanlab.frameworks.tensorflow.loop import keras, tf  # noqa: E402
from nanlab.seeding import seed_everything  # noqa: E402

BATCH = 16


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
    assert "tensorflow.python.framework.op_callbacks" in report.note  # names what moved
    assert all(np.isfinite(w).all() for w in broken.get_weights())  # still from before the bad step


def healthy_and_broken_fits(caplog):
    """Fit a healthy MLP and a broken one (lr 20) under the watch; the broken run's report and the warnings."""
    healthy = mlp(1)
    watch = nanlab.watch(healthy)
    with caplog.at_level(logging.WARNING, logger="nanlab.watch"):
        fit(healthy, 0.05, [watch])
        assert watch.step == 12 and watch.report is None
        broken = mlp(0)
        with pytest.raises(nanlab.NonFiniteError) as raised:
            fit(broken, 20.0, [nanlab.watch(broken)])
    assert "train_step" not in broken.__dict__ and "apply" not in broken.optimizer.__dict__  # detached
    return watch, broken, raised.value.report, " ".join(record.getMessage() for record in caplog.records)


def test_a_moved_flatten_layers_leaves_localisation_to_the_listed_layers(monkeypatch, caplog):
    """Keras' private Layer._flatten_layers gone (simulated: private looks it up under another name): the replay
    traces the layers Model.layers lists, and says so."""
    from nanlab.frameworks.tensorflow import private

    monkeypatch.setattr(private, "FLATTEN_LAYERS", "_flatten_layers_renamed")
    watch, broken, report, _ = healthy_and_broken_fits(caplog)
    assert "Layer._flatten_layers moved" in report.note and report.cause == "high-learning-rate"
    assert report.phase in ("forward", "loss") and report.module and report.op  # still localised
    assert all(np.isfinite(w).all() for w in broken.get_weights())


def test_a_moved_train_step_hook_keeps_the_check_without_the_replay(monkeypatch, caplog):
    """A Keras whose fit no longer calls Model.train_step through the model (simulated: the step function is made
    from the class's method): the watch says which hook moved, checks from its callback, holds bad updates back
    still, and reports without localisation."""
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    def make_train_function(self, force=False):
        if self.train_function is None or force:
            self.train_function = self._make_function(type(self).train_step.__get__(self))
        return self.train_function

    monkeypatch.setattr(TensorFlowTrainer, "make_train_function", make_train_function)
    watch, broken, report, warnings = healthy_and_broken_fits(caplog)
    assert "Model.train_step moved" in warnings and len(watch.history.losses) == 12
    assert "Localisation was unavailable" in report.note and "Model.train_step" in report.note
    assert report.step > 2 and report.cause == "high-learning-rate"
    assert all(np.isfinite(w).all() for w in broken.get_weights())  # the update was still held back


def _train_step_without(monkeypatch, attribute: str, owner: Callable) -> None:
    """Make fit's train step run with ``attribute`` no longer reached through the instance ``owner(model)``."""
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    original = TensorFlowTrainer.train_step

    def train_step(self, data):
        target = owner(self)
        shadowed = vars(target).pop(attribute, None)
        try:
            return original(self, data)
        finally:
            if shadowed is not None:
                vars(target)[attribute] = shadowed

    monkeypatch.setattr(TensorFlowTrainer, "train_step", train_step)


def test_a_moved_compute_loss_hook_still_stops_on_the_gradients(monkeypatch, caplog):
    """fit's step no longer calling Model.compute_loss through the model: the loss and labels go unchecked (and
    the watch says so), the gradient norm still catches the NaN before its update."""
    _train_step_without(monkeypatch, "compute_loss", lambda model: model)
    watch, broken, report, warnings = healthy_and_broken_fits(caplog)
    assert "Model.compute_loss moved" in warnings and watch.history.losses == []
    assert len(watch.history.grad_norms) == 12
    assert report.step > 2 and report.cause == "high-learning-rate"
    assert all(np.isfinite(w).all() for w in broken.get_weights())


def test_a_moved_optimizer_apply_hook_still_stops_with_a_note(monkeypatch, caplog):
    """fit's step no longer calling Optimizer.apply through the optimizer: bad updates can no longer be held back;
    the watch says so, still stops at the first non-finite loss, and its report says the update was applied."""
    _train_step_without(monkeypatch, "apply", lambda model: model.optimizer)
    watch, broken, report, warnings = healthy_and_broken_fits(caplog)
    assert "Optimizer.apply moved" in warnings and len(watch.history.losses) == 12
    assert report.step > 2 and "Localisation was unavailable" in report.note and "was applied" in report.note


def test_the_gradient_norm_is_exact_past_float32s_sum_of_squares_and_non_finite_with_a_nan():
    """float32 squares overflow past a norm of ~2.6e19: the norm is then summed again in float64."""
    from nanlab.frameworks.tensorflow.watch import global_norm

    huge = [tf.fill([4], 1e30), tf.constant([3.0, 4.0])]
    assert global_norm(huge).numpy() == pytest.approx(2e30, rel=1e-6)
    assert global_norm([tf.constant([3.0, 4.0]), tf.constant([[12.0]])]).numpy() == pytest.approx(13.0)
    assert math.isnan(global_norm([tf.constant([1.0, math.nan])]).numpy())
    assert global_norm([]).numpy() == 0.0


def gaussian_nll(y, output):
    """The negative log-likelihood of float targets ``y`` (shape (n,)) under N(mean, spread**2) from a Dense(2)."""
    mean, spread = output[:, 0], tf.nn.softplus(output[:, 1]) + 1e-3
    return tf.reduce_mean(tf.math.log(spread) + 0.5 * tf.square((tf.cast(y, output.dtype) - mean) / spread))


def regression_head(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((20,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])


def test_float_targets_of_a_two_unit_regression_head_are_not_class_ids():
    """A Dense(2) head (mean and spread) with float targets of shape (n,): regression, never class ids (the targets'
    dtype and the loss decide, not the shapes), so a healthy run is neither stopped nor changed by the watch."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8 * 32, 20)).astype(np.float32)
    y = (3.0 * x[:, 0] + 5.0).astype(np.float32)  # mostly outside [0, 2): "labels out of range" if taken for ids

    def fitted(model, callbacks):
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss=gaussian_nll)
        return model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)

    plain = fitted(regression_head(), [])
    watch = nanlab.watch(regression_head())
    watched = fitted(watch.watched, [watch])
    assert watch.report is None and not watch.stopped and watch.step == 8, str(watch.report)
    assert watched.history["loss"] == plain.history["loss"]

    model = regression_head()
    optimizer = keras.optimizers.SGD(0.01)
    with nanlab.watch(model, optimizer, gaussian_nll) as tape_watch:
        for step in range(8):
            batch = tf.constant(x[step * 32:(step + 1) * 32]), tf.constant(y[step * 32:(step + 1) * 32])
            with tape_watch.checked_step(*batch):
                with tf.GradientTape() as tape:
                    loss = tape_watch.loss_fn(batch[1], model(batch[0], training=True))
                optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    assert tape_watch.report is None and tape_watch.step == 8


def test_float_class_ids_under_a_sparse_loss_are_still_checked():
    """Float labels are class ids for SparseCategoricalCrossentropy (decided from the compiled loss): an
    out-of-range one is still reported as a bad label, before the loss raises or returns NaN."""
    x, y = blobs()
    y = y[:4 * 32].astype(np.float32)
    y[2 * 32 + 5] = 9.0  # 4 classes
    model = mlp(0)
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(nanlab.NonFiniteError) as raised:
        model.fit(x[:4 * 32], y, batch_size=32, epochs=1, shuffle=False, verbose=0, callbacks=[nanlab.watch(model)])
    report = raised.value.report
    assert (report.step, report.phase, report.samples) == (2, "data", [5]) and "9" in report.label_problem


def test_a_backward_culprit_is_traced_to_the_forward_op_its_layer_and_samples():
    """sqrt at 0 is finite forward; its gradient op (SqrtGrad) is the first to go non-finite. The report names the
    layer where the sqrt ran (not the layer of the first bad parameter), the sqrt's own input (an exact 0), and
    the samples whose gradient went non-finite."""
    from nanlab.watching.vocabulary import OpFamily

    cause = nanlab.get_cause("sqrt-at-zero")
    seed_everything(0, "tensorflow")
    training = cause.recipe("tensorflow").SETTINGS["broken"](seed=0, device="cpu")
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training):
            keras_loop.train(training, cause.steps)
    report = raised.value.report
    assert (report.phase, report.op, report.op_family) == ("backward", "sqrtgrad", OpFamily.SQRT)
    assert (report.module, report.module_kind) == ("std_pooling", "StdPooling")
    assert len(report.op_inputs) == 1 and report.op_inputs[0].zeros > 0 and report.op_inputs[0].negatives == 0
    assert report.op_inputs[0].dtype == "float32" and report.op_inputs[0].nonfinite == 0
    assert report.samples and len(report.samples) < report.batch_size
