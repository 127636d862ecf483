"""``nanlab.watch`` for TensorFlow/Keras: a callback for ``model.fit`` and a context for GradientTape loops.

While training is healthy the watch keeps, inside the step itself, a copy of the variables from before the update
and of the batch (plain ``assign`` ops, no host traffic), and computes one float64 pair: the loss and the norm of
the update the optimizer just applied. The callback reads that pair once per step (one host synchronisation);
nothing runs per layer. On the first step where either is non-finite, the watch restores the copied variables and
replays the step eagerly, even when ``fit`` compiled it with ``tf.function`` or XLA: layer by layer to find the
first layer whose finite inputs gave a non-finite output, that layer once more under
``tf.debugging.enable_check_numerics`` to name the op, then the loss and the gradients. It leaves the model with the
weights from before the bad step and raises ``NonFiniteError``.

Keras records no gradient norms during ``fit``, so the history the cause rules read is the update norm
(``lr * |g|`` for plain SGD), which grows the same way when a step size is too large.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable

import numpy as np
from tensorflow.python.framework import op_callbacks

from nanlab.errors import NanlabError, NonFiniteError
from nanlab.frameworks.tensorflow.backend import keras, tf
from nanlab.report import NonFiniteReport, conclude, is_recurrent
from nanlab.evidence import HUGE_TARGET_SCALE, label_problem, symmetric_labels

# Ops that write -inf on purpose (attention masks): their output is not a fault, what consumes it may be.
FILL_OPS = {"SelectV2", "Select", "Fill", "TensorScatterUpdate"}
LOSS_PATH = "loss"


class KerasWatch(keras.callbacks.Callback):
    """``model.fit(..., callbacks=[nanlab.watch(model)])``, or ``with nanlab.watch(model, optimizer, loss_fn) as w``
    around a GradientTape loop whose step runs inside ``with w.step(x, y):`` and computes the loss with
    ``w.loss_fn``. A nanlab ``keras_loop.Training`` is watched with ``with nanlab.watch(training):``."""

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer | None = None,
                 loss_fn: Callable | None = None, training=None):
        super().__init__()
        if not isinstance(model, keras.Model):
            raise NanlabError(f"nanlab.watch needs a keras.Model (or a Training), got {type(model).__name__}")
        self.watched, self.optimizer, self.training = model, optimizer, training
        self._user_loss = loss_fn
        self.step_count = 0
        self.losses: list[float] = []
        self.update_norms: list[float] = []
        self._shadows: list[tf.Variable] | None = None
        self._batch_vars: list[tf.Variable] | None = None
        self._batch_structure = None
        self._status: tf.Variable | None = None
        self._original_train_step = None
        self._loss = self._batch = None
        self._open = False

    # -- shared machinery ----------------------------------------------------------------------------------------
    def _variables(self) -> list:
        optimizer = self.optimizer or getattr(self.watched, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.watched.trainable_variables)
        return list(self.watched.variables) + (list(optimizer.variables) if optimizer is not None else [])

    def _make_shadows(self) -> None:
        if not self.watched.variables:
            raise NanlabError("nanlab.watch needs a model with its weights: call it once on a batch, or give "
                              "keras.Input")
        variables = self._variables()
        self._shadows = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v in variables]
        trainable = {id(v) for v in self.watched.trainable_variables}
        self._trainable_pairs = [(v, s) for v, s in zip(variables, self._shadows) if id(v) in trainable]
        self._status = tf.Variable(tf.zeros(2, tf.float64), trainable=False)
        self._snapshot_fn = tf.function(self._snapshot)
        self._status_fn = tf.function(self._update_status)

    def _snapshot(self) -> None:
        for shadow, variable in zip(self._shadows, self._variables()):
            shadow.assign(variable.value if hasattr(variable, "value") else variable)

    def _update_status(self, loss) -> None:
        """[loss, norm of (weights - weights before the step)], in float64: both finite exactly when all is well."""
        squares = [tf.reduce_sum(tf.square(tf.cast(v.value - s, tf.float64)))
                   for v, s in self._trainable_pairs]
        norm = tf.sqrt(tf.add_n(squares)) if squares else tf.constant(0.0, tf.float64)
        self._status.assign(tf.stack([tf.cast(tf.reduce_sum(loss), tf.float64), norm]))

    def _check(self) -> None:
        loss, norm = self._status.numpy().tolist()
        if not (math.isfinite(loss) and math.isfinite(norm)):
            report = conclude(self._replay())
            self.on_train_end()
            raise NonFiniteError(report)
        self.losses.append(loss)
        self.update_norms.append(norm)
        self.step_count += 1

    # -- model.fit -----------------------------------------------------------------------------------------------
    def set_model(self, model) -> None:
        super().set_model(model)
        if model is not self.watched:
            raise NanlabError("this watch was made for another model; use nanlab.watch(model) with fit's model")
        self._make_shadows()
        self._batch_vars = None  # sized afresh by this fit's first batch
        self._original_train_step = model.train_step
        model.train_step = self._watched_train_step
        model.train_function = None  # rebuilt by fit around the watched step

    def _watched_train_step(self, data):
        flat = tf.nest.flatten(data)
        if self._batch_vars is None:  # first trace only: tf.function allows variables created on the first call
            self._batch_structure = data
            self._batch_vars = [_batch_buffer(t) for t in flat]
            self._batch_rows = tf.Variable(0, dtype=tf.int32, trainable=False)
        rows = tf.shape(flat[0])[0]
        for variable, tensor in zip(self._batch_vars, flat):
            if variable.shape.is_fully_defined():
                variable[:rows].assign(tensor)
            else:
                variable.assign(tensor)
        self._batch_rows.assign(rows)
        self._snapshot()
        logs = self._original_train_step(data)
        self._update_status(logs["loss"])
        return logs

    def on_train_batch_end(self, batch, logs=None) -> None:
        self._check()

    def on_train_end(self, logs=None) -> None:
        if self._original_train_step is not None:
            self.watched.__dict__.pop("train_step", None)
            self.watched.train_function = None

    # -- GradientTape loops --------------------------------------------------------------------------------------
    def __enter__(self) -> "KerasWatch":
        self._make_shadows()
        if self.training is not None:
            self.training.loss_fn = self.loss_fn
            self._user_batches = self.training.batches
            self.training.batches = self._watched_batches()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self.training is not None:
            self.training.loss_fn, self.training.batches = self._user_loss, self._user_batches
        if kind is None and self._open:
            self._close_step()

    def _watched_batches(self):
        for x, y in self._user_batches:
            if self._open:
                self._close_step()
            self._open_step(x, y)
            yield x, y

    @contextmanager
    def step(self, x, y):
        """One training step of a GradientTape loop: the variables are copied before it and checked after it."""
        self._open_step(x, y)
        yield self
        self._close_step()

    def _open_step(self, x, y) -> None:
        self._batch, self._loss, self._open = (x, y), None, True
        self._snapshot_fn()

    def _close_step(self) -> None:
        self._open = False
        self._status_fn(self._loss if self._loss is not None else tf.zeros((), tf.float32))
        self._check()

    def loss_fn(self, y_true, y_pred, *args, **kwargs):
        """Your loss function, unchanged, with its value recorded (and out-of-range labels reported)."""
        if self._user_loss is None:
            raise NanlabError("watch.loss_fn needs the loss function: nanlab.watch(model, optimizer, loss_fn)")
        try:
            loss = self._user_loss(y_true, y_pred, *args, **kwargs)
        except tf.errors.InvalidArgumentError as error:
            problem = label_problem(y_true, int(y_pred.shape[-1]) if len(y_pred.shape) >= 2 else None)
            if problem is None:
                raise
            report = self._report("data")
            report.samples, report.label_problem, report.data_findings = problem[1], problem[0], [problem[0]]
            report.symmetric_labels = symmetric_labels(y_true)
            report.note = "The device raised instead of producing NaN."
            raise NonFiniteError(conclude(report)) from error
        self._loss = loss
        return loss

    # -- the exact path, taken once ------------------------------------------------------------------------------
    def _report(self, phase: str) -> NonFiniteReport:
        return NonFiniteReport("tensorflow", self.step_count, phase, losses=list(self.losses),
                               grad_norms=list(self.update_norms), norm_name="update norm")

    def _replay(self) -> NonFiniteReport:
        """Replay the failing step eagerly (every ``tf.function`` too), from the variables saved before it."""
        eager = tf.config.functions_run_eagerly()
        tf.config.run_functions_eagerly(True)
        try:
            return self._replay_eagerly()
        finally:
            tf.config.run_functions_eagerly(eager)

    def _replay_eagerly(self) -> NonFiniteReport:
        report = self._report("optimizer update")
        variables = self._variables()
        updated_bad = [v.path for v in self.watched.trainable_variables
                       if not bool(tf.reduce_all(tf.math.is_finite(v)))]
        for variable, shadow in zip(variables, self._shadows):
            variable.assign(shadow)
        x, y, sample_weight = self._replay_batch()
        batch = int(tf.nest.flatten(x)[0].shape[0])
        report.batch_size = batch
        bad_rows = _nonfinite_rows(tf.nest.flatten(x) + ([y] if y is not None and y.dtype.is_floating else []),
                                   batch)
        if y is not None:
            report.symmetric_labels = symmetric_labels(y)
        if y is not None and y.dtype.is_floating:
            report.huge_targets = float(tf.reduce_max(tf.abs(tf.cast(y, tf.float64)))) > HUGE_TARGET_SCALE
        if bad_rows:
            report.phase, report.samples = "data", bad_rows
            report.data_findings = [f"non-finite values in samples {', '.join(map(str, bad_rows[:8]))}"]
            return report

        tracer = _LayerTracer(self.watched, batch)
        with tf.GradientTape() as tape, tracer:
            y_pred = self.watched(x, training=True)
            loss = self._compute_loss(x, y, y_pred, sample_weight) if y is not None else None
        if tracer.culprit is not None:
            layer, args, kwargs, rows = tracer.culprit
            report.phase, report.module, report.samples = "forward", layer.name, rows
            report.op, report.value, report.op_inputs = _first_bad_op(lambda: layer.call(*args, **kwargs))
        elif loss is not None and not bool(tf.reduce_all(tf.math.is_finite(loss))):
            report.phase, report.module = "loss", LOSS_PATH
            report.op, report.value, report.op_inputs = _first_bad_op(
                lambda: self._compute_loss(x, y, y_pred, sample_weight))
            report.samples = [i for i in range(batch) if not bool(tf.reduce_all(tf.math.is_finite(
                self._compute_loss(x[i:i + 1], y[i:i + 1], y_pred[i:i + 1], None))))]
        trainable = self.watched.trainable_variables
        if loss is not None:
            gradients = tape.gradient(loss, trainable)
            bad = [v.path for v, g in zip(trainable, gradients)
                   if g is not None and not bool(tf.reduce_all(tf.math.is_finite(g)))]
            if bad:
                report.parameter = bad[-1]  # backprop reaches the last layer's variables first
                if report.phase == "optimizer update":
                    report.phase, report.module = "backward", bad[-1].rsplit("/", 1)[0]
                    with tf.GradientTape() as again:
                        again_loss = self._compute_loss(x, y, self.watched(x, training=True), sample_weight)
                    report.op, report.value, _ = _first_bad_op(lambda: again.gradient(again_loss, trainable))
        for variable, shadow in zip(variables, self._shadows):
            variable.assign(shadow)  # the replay's forward pass may have moved BatchNorm statistics or seeds
        if report.phase == "optimizer update":
            report.module = type(self.optimizer or self.watched.optimizer).__name__
            report.op, report.parameter = "apply_gradients", updated_bad[0] if updated_bad else None
        report.recurrent = is_recurrent(report.module) or is_recurrent(report.parameter) or any(
            is_recurrent(type(layer).__name__) for layer in self.watched._flatten_layers(include_self=False)
            if report.module and report.module.split("/")[-1] == layer.name)
        return report

    def _replay_batch(self):
        if self._batch is not None and self._original_train_step is None:
            x, y = self._batch
            return x, y, None
        rows = int(self._batch_rows.numpy())
        data = tf.nest.pack_sequence_as(self._batch_structure,
                                        [tf.convert_to_tensor(v)[:rows] for v in self._batch_vars])
        return keras.utils.unpack_x_y_sample_weight(data)

    def _compute_loss(self, x, y, y_pred, sample_weight):
        if self._original_train_step is None:
            return self._user_loss(y, y_pred)
        return self.watched.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)


class _LayerTracer:
    """While active, every layer's ``call`` checks its output: the first finite-in, non-finite-out layer is kept."""

    def __init__(self, model: keras.Model, batch: int):
        self.layers = list(model._flatten_layers(include_self=False))
        self.batch = batch
        self.culprit = None

    def __enter__(self):
        for layer in self.layers:
            layer.__dict__["call"] = self._wrap(layer, layer.call)
        return self

    def __exit__(self, *exc):
        for layer in self.layers:
            layer.__dict__.pop("call", None)

    def _wrap(self, layer, call):
        def traced(*args, **kwargs):
            output = call(*args, **kwargs)
            if self.culprit is None:
                outputs = _floats(tf.nest.flatten(output))
                bad = [t for t in outputs if not bool(tf.reduce_all(tf.math.is_finite(t)))]
                if bad and _turned_bad(bad, _floats(tf.nest.flatten((args, kwargs)))):
                    self.culprit = (layer, args, kwargs, _nonfinite_rows(bad, self.batch))
            return output
        return traced


def _turned_bad(outputs, inputs) -> bool:
    """True when this layer is where it went wrong: NaN out of NaN-free inputs, or Inf out of finite ones."""
    def has_nan(t):
        return bool(tf.reduce_any(tf.math.is_nan(t)))
    if any(has_nan(t) for t in outputs):
        return not any(has_nan(t) for t in inputs)
    return all(bool(tf.reduce_all(tf.math.is_finite(t))) for t in inputs)


def _batch_buffer(tensor) -> tf.Variable:
    """A variable to keep a copy of one batch tensor in.

    With a static shape (XLA compiles one), a fixed buffer sized by that first batch and filled row by row, since
    XLA cannot give a variable a new shape; a later batch may be smaller (an epoch's last), never larger. Without
    one, a variable of unknown shape that each batch replaces.
    """
    if tensor.shape.is_fully_defined():
        return tf.Variable(tf.zeros(tensor.shape, tensor.dtype), trainable=False)
    return tf.Variable(tf.zeros([0] * len(tensor.shape), tensor.dtype), shape=tf.TensorShape(None), trainable=False)


def _floats(values) -> list:
    return [t for t in values if isinstance(t, (tf.Tensor, tf.Variable)) and t.dtype.is_floating]


def _first_bad_op(compute) -> tuple[str | None, str | None, list[dict]]:
    """Re-run ``compute`` eagerly watching every op; return the first that turned good inputs into NaN/Inf.

    Uses the eager op-callback hook that ``tf.debugging.enable_check_numerics`` is built on (not public API), so
    that ops which write -inf on purpose (masks) can be passed over and the op's inputs inspected. The callback
    reads tensors with NumPy only: running TensorFlow ops inside it would call it again.
    """
    found: list[tuple[str, str, list[dict]]] = []

    def callback(op_type, inputs, attrs, outputs, op_name=None, graph=None):
        if found or graph is not None or op_type in FILL_OPS:
            return None
        outs, ins = _float_arrays(outputs), _float_arrays(inputs)
        bad = [a for a in outs if not np.isfinite(a).all()]
        if bad and _turned_bad_arrays(bad, ins):
            found.append((op_type.lower(), _kind(bad[0]), [_stats(a) for a in ins]))
        return None

    op_callbacks.add_op_callback(callback)
    try:
        compute()
    finally:
        op_callbacks.remove_op_callback(callback)
    return found[0] if found else (None, None, [])


def _float_arrays(tensors) -> list[np.ndarray]:
    return [t.numpy() for t in tensors or () if hasattr(t, "numpy") and t.dtype.is_floating]


def _turned_bad_arrays(outputs, inputs) -> bool:
    if any(np.isnan(a).any() for a in outputs):
        return not any(np.isnan(a).any() for a in inputs)
    return all(np.isfinite(a).all() for a in inputs)


def _kind(array: np.ndarray) -> str:
    if np.isnan(array).any():
        return "nan"
    return "-inf" if (array == -np.inf).any() else "inf"


def _stats(array: np.ndarray) -> dict:
    return {"zeros": bool((array == 0).any()), "negatives": bool((array < 0).any()),
            "max_abs": float(np.abs(array).max()) if array.size else 0.0}


def _nonfinite_rows(tensors, batch: int) -> list[int]:
    rows: set[int] = set()
    for tensor in _floats(tensors):
        if len(tensor.shape) == 0 or tensor.shape[0] != batch:
            continue
        flat = tf.reshape(tf.convert_to_tensor(tensor), (batch, -1))
        rows.update(tf.where(~tf.reduce_all(tf.math.is_finite(flat), axis=1))[:, 0].numpy().tolist())
    return sorted(rows)


def watch(model, optimizer=None, loss_fn=None, training=None) -> KerasWatch:
    """``nanlab.watch`` for a ``keras.Model`` (or a nanlab ``Training``)."""
    return KerasWatch(model, optimizer, loss_fn, training=training)
