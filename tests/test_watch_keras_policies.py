"""What the Keras watch does at a non-finite step: raise (default), stop (fit ends cleanly, other callbacks' ends
run) or skip (that update is undone, training goes on, and it gives up after ``max_skips`` in a row)."""
import logging
import os

import numpy as np
import pytest

pytest.importorskip("tensorflow")
import nanlab  # noqa: E402
import nanlab.causes.high_learning_rate  # noqa: E402
from nanlab.frameworks.tensorflow.backend import keras, tf  # noqa: E402

BATCH = 32


def mlp(lr):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def blobs(steps=16):
    data = nanlab.causes.high_learning_rate.make_data(0)
    return data.x_train[:steps * BATCH], data.y_train[:steps * BATCH]


def finite(model) -> bool:
    return all(np.isfinite(w).all() for w in model.get_weights())


class EndRecorder(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        self.ended = True


def fit_with(model, stopper, tmp_path, x=None, y=None):
    """Fit with a BackupAndRestore (saving every batch), `stopper` and an epoch-end ModelCheckpoint, in the order
    the Keras docs show callbacks; returns what survived."""
    if x is None:
        x, y = blobs()
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), save_freq=1)
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "last.weights.h5"), save_weights_only=True)
    ends = EndRecorder()
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[stopper, backup, checkpoint, ends])
    saved = mlp(0.1)
    saved.load_weights(str(tmp_path / "last.weights.h5"))
    return {"ended": getattr(ends, "ended", False), "backup kept": os.path.exists(tmp_path / "backup"),
            "checkpoint finite": finite(saved), "model finite": finite(model)}


def test_stop_ends_fit_cleanly_and_checkpoints_keep_the_weights_from_before_the_bad_step(tmp_path):
    model = mlp(20.0)
    watch = nanlab.watch(model, on_nonfinite="stop")
    survived = fit_with(model, watch, tmp_path / "watch")
    assert watch.stopped and watch.report is not None and watch.report.cause == "high-learning-rate"
    # the watch's core: a stopped step is counted and recorded as skipped (its update never happened)
    assert watch.step == watch.report.step + 1 and watch.report.step == len(watch.history.losses) > 2
    assert watch.history.skipped_steps == [watch.report.step]
    assert survived == {"ended": True, "backup kept": False, "checkpoint finite": True, "model finite": True}
    assert "train_step" not in model.__dict__ and "apply" not in model.optimizer.__dict__

    # Measured beside it: TerminateOnNaN also stops gracefully, so BackupAndRestore's on_train_end deletes its
    # backup just the same, but the model and the epoch-end checkpoint keep the NaN weights of the bad update.
    terminated = fit_with(mlp(20.0), keras.callbacks.TerminateOnNaN(), tmp_path / "terminate")
    assert terminated == {"ended": True, "backup kept": False, "checkpoint finite": False, "model finite": False}


def test_raise_keeps_backup_and_restores_weights(tmp_path):
    model = mlp(20.0)
    x, y = blobs()
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), save_freq=1)
    with pytest.raises(nanlab.NonFiniteError):
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                  callbacks=[nanlab.watch(model), backup])  # the watch first: the backup never sees NaN weights
    saved = mlp(0.1)
    saved.load_weights(str(tmp_path / "backup" / "latest.weights.h5"))
    assert finite(saved) and finite(model)


def poisoned(rows):
    x, y = blobs()
    x = x.copy()
    x[rows, 3] = np.nan
    return x, y


def test_skip_drops_the_bad_update_and_goes_on(caplog):
    model = mlp(0.05)
    watch = nanlab.watch(model, on_nonfinite="skip")
    x, y = poisoned([5 * BATCH + 7])
    with caplog.at_level(logging.WARNING, logger="nanlab.watch"):
        history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[watch])
    assert watch.history.skipped_steps == [5] and watch.step == 16 and len(watch.history.losses) == 15
    assert watch.report.phase == "data" and watch.report.samples == [7] and watch.report.step == 5
    assert finite(model) and not watch.stopped
    assert any("skipped step 5" in record.getMessage() for record in caplog.records)
    assert np.isfinite(history.history["loss"][-1]), "Keras' running loss is a model variable, restored too"

    plain = mlp(0.05)  # the skipped update is exactly absent: same as training on the other 15 batches
    keep = np.r_[0:5 * BATCH, 6 * BATCH:16 * BATCH]
    plain.fit(x[keep], y[keep], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    for watched, reference in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(watched, reference, rtol=1e-5, atol=1e-6)


def test_skip_gives_up_after_max_skips_in_a_row():
    model = mlp(0.05)
    x, y = poisoned([step * BATCH for step in range(4, 16)])
    with pytest.raises(nanlab.NonFiniteError) as raised:
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                  callbacks=[nanlab.watch(model, on_nonfinite="skip", max_skips=3)])
    report = raised.value.report
    # steps 4, 5 and 6 skipped (max_skips=3), the fourth bad step in a row (7) gives up: the core's count
    assert report.step == 7 and "Gave up after 3 skipped steps in a row" in str(report)
    assert finite(model)


def test_stop_in_a_gradient_tape_loop():
    model = mlp(20.0)
    optimizer = keras.optimizers.SGD(20.0)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x, y = blobs()
    steps_run = 0
    with nanlab.watch(model, optimizer, loss_fn, on_nonfinite="stop") as watch:
        for step in range(16):
            batch = tf.constant(x[step * BATCH:(step + 1) * BATCH]), tf.constant(y[step * BATCH:(step + 1) * BATCH])
            with watch.checked_step(*batch):
                with tf.GradientTape() as tape:
                    loss = watch.loss_fn(batch[1], model(batch[0], training=True))
                optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
            steps_run += 1
            if watch.stopped:
                break
    assert watch.stopped and steps_run == watch.report.step + 1 < 16 and finite(model)


def test_skip_leaves_adam_batchnorm_and_dropout_as_if_the_bad_batch_never_came():
    """The guarded update holds back Adam's step count and moments; the forward pass's own changes (BatchNorm's
    moving statistics, the dropout seed, fit's running loss) are put back from the watch's copies."""

    def net():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(32), keras.layers.BatchNormalization(),
                                  keras.layers.Activation("relu"), keras.layers.Dropout(0.3), keras.layers.Dense(4)])
        model.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    x, y = poisoned([5 * BATCH + 7])
    model = net()
    watch = nanlab.watch(model, on_nonfinite="skip")
    history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[watch])
    assert watch.history.skipped_steps == [5] and finite(model)

    plain = net()
    keep = np.r_[0:5 * BATCH, 6 * BATCH:16 * BATCH]
    plain_history = plain.fit(x[keep], y[keep], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations) == int(plain.optimizer.iterations) == 15
    for watched, reference in zip(model.variables, plain.variables):  # weights, moving statistics, seed state
        np.testing.assert_allclose(watched.numpy(), reference.numpy(), rtol=1e-5, atol=1e-6, err_msg=watched.path)
    for watched, reference in zip(model.optimizer.variables, plain.optimizer.variables):
        np.testing.assert_allclose(watched.numpy(), reference.numpy(), rtol=1e-5, atol=1e-6, err_msg=watched.path)
    assert history.history["loss"][-1] == pytest.approx(plain_history.history["loss"][-1], rel=1e-5)


def adam_batchnorm_net():
    keras.utils.set_random_seed(0)
    frozen = keras.layers.Dense(32, name="frozen")
    frozen.trainable = False
    model = keras.Sequential([keras.Input((20,)), frozen, keras.layers.Dense(32), keras.layers.BatchNormalization(),
                              keras.layers.Activation("relu"), keras.layers.Dropout(0.3), keras.layers.Dense(4)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_no_per_step_copy_of_weights_or_optimizer_state():
    """The update is decided before it is applied, so the watch copies only what a forward pass changes: BatchNorm's
    moving statistics, the seed state and fit's metrics; not the weights, not Adam's moments, not the frozen layer's
    weights (a forward pass leaves them alone)."""
    model = adam_batchnorm_net()
    watch = nanlab.watch(model)
    x, y = blobs(2)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[watch])
    copied = {v.path for v in watch._state}
    norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert {norm.moving_mean.path, norm.moving_variance.path} <= copied
    untouched = model.trainable_variables + model.optimizer.variables + model.get_layer("frozen").weights
    assert not copied & {v.path for v in untouched}
    copied_size = sum(int(np.prod(v.shape)) for v in watch._state)
    assert copied_size < 0.05 * sum(int(np.prod(v.shape)) for v in model.variables + model.optimizer.variables)


def test_raise_leaves_every_variable_as_the_bad_step_found_it():
    """Weights, Adam's moments and step count, BatchNorm's statistics and the seed state after a raise equal a run
    that stopped before the bad batch: the update was held back, the forward's changes put back, and the replay
    (which runs forward, backward and the update again) put every variable back."""
    x, y = blobs()
    x = x.copy()
    x[5 * BATCH + 7] = 3e38  # finite, but the first matmul overflows: the replay runs forward and backward
    model = adam_batchnorm_net()
    with pytest.raises(nanlab.NonFiniteError) as raised:
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[nanlab.watch(model)])
    report = raised.value.report
    assert (report.step, report.phase, report.module, report.op) == (5, "forward", "frozen", "matmul"), str(report)
    plain = adam_batchnorm_net()
    plain.fit(x[:5 * BATCH], y[:5 * BATCH], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    for watched, reference in zip(model.variables + model.optimizer.variables,
                                  plain.variables + plain.optimizer.variables):
        np.testing.assert_array_equal(watched.numpy(), reference.numpy(), err_msg=watched.path)
