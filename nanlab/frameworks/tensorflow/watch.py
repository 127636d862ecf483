"""``nanlab.watch`` for TensorFlow/Keras, the cheap per-step layer: a callback for ``model.fit`` and a context for
GradientTape loops (a ``keras.Model``, a ``tf.Module`` or a list of ``tf.Variable``s, with a Keras optimizer).

While training is healthy the watch works inside the step itself, with no host traffic: it copies the variables
(model and optimizer) and the batch into shadow variables before the step, and it fills one float64 status vector
(``STATUS``): the step's loss, the norm of the gradients the optimizer was given (in the loss's own units: divided by
the loss scale under a ``LossScaleOptimizer``), the number of out-of-range class labels, and the loss scale. It reads
that vector once per step (one host synchronisation); nothing runs per layer.

Integer labels are checked before the loss runs: the bad ones are counted and replaced by class 0 for that step,
whose update the watch then undoes. So an out-of-range label becomes a report on every device, instead of an
``InvalidArgumentError`` on CPU and a silent NaN on GPU or under XLA.

On a bad step the watch imports ``replay`` (the only module that touches TensorFlow's and Keras' private APIs) to
localise it; when that import fails, training with the watch still works and the report says localisation was
unavailable. What happens next follows the ``WatchPolicy`` (``on_nonfinite="raise" | "stop" | "skip"``). Under mixed
precision an overflow the loss scaler skips is expected: it is recorded in ``history.skipped_steps``, and only an
overflow that persists (``WatchPolicy.overflow_persists``) is a fault.
"""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np

from nanlab.errors import NanlabError, NonFiniteError
from nanlab.frameworks.tensorflow.backend import keras, tf
from nanlab.report import NonFiniteReport, conclude
from nanlab.watching import WatchHistory, WatchPolicy

LOGGER = logging.getLogger("nanlab")
STATUS = ("loss", "gradient norm", "bad labels", "loss scale")
ACCUMULATING = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                    aggregation=tf.VariableAggregation.SUM)  # per replica under tf.distribute; read as their sum
PER_REPLICA = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                   aggregation=tf.VariableAggregation.NONE)
HALF_RANGES = {"float16": 65504.0, "bfloat16": float(tf.bfloat16.max)}  # the largest finite value of each
MIRRORED = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


@dataclass
class FailedStep:
    """What the replay needs to run a failed step again: everything as it was before the step."""

    report: NonFiniteReport
    model: object
    trainable: list
    x: object
    y: object
    sample_weight: object
    forward: Callable | None
    compute_loss: Callable | None
    scale_loss: Callable
    apply: Callable
    optimizer_name: str


class KerasWatch(keras.callbacks.Callback):
    """``model.fit(..., callbacks=[nanlab.watch(model)])``, or, around a GradientTape loop::

        with nanlab.watch(model, optimizer, loss_fn) as watch:
            for x, y in batches:
                with watch.checked_step(x, y):
                    ...  # loss = watch.loss_fn(y, model(x)); optimizer.apply(gradients, variables)
                if watch.stopped:
                    break

    ``model`` is a ``keras.Model``, a callable ``tf.Module`` or a list of ``tf.Variable``s; a nanlab ``Training`` is
    watched with ``with nanlab.watch(training):``. ``step`` counts the steps checked, ``history`` holds their losses,
    gradient norms, skipped steps and loss scales, ``report`` the first bad step's ``NonFiniteReport``.
    """

    def __init__(self, model, optimizer: keras.optimizers.Optimizer | None = None, loss_fn: Callable | None = None,
                 training=None, policy: WatchPolicy | None = None):
        super().__init__()
        self.watched = _watchable(model)
        self.optimizer, self.training = optimizer, training
        self.policy = policy or WatchPolicy()
        self.step = 0
        self.history = WatchHistory()
        self.report: NonFiniteReport | None = None
        self.stopped = False
        self._user_loss = loss_fn
        self._built = False
        self._fitting = False
        self._batch = None
        self._user_batches = None
        self._open = False
        _refuse_steps_per_execution(self.watched)

    # -- what is watched -----------------------------------------------------------------------------------------
    @property
    def _optimizer(self):
        return self.optimizer if self.optimizer is not None else getattr(self.watched, "optimizer", None)

    @property
    def _strategy(self):
        return getattr(self.watched, "distribute_strategy", None) or tf.distribute.get_strategy()

    def _trainable(self) -> list:
        if isinstance(self.watched, list):
            return [v for v in self.watched if v.trainable]
        return list(self.watched.trainable_variables)

    def _variables(self) -> list:
        """Every variable a step changes: the model's (and, for a keras.Model, its metrics', so that a skipped
        step leaves no NaN in fit's running loss) and the optimizer's."""
        own = self.watched if isinstance(self.watched, list) else list(self.watched.variables)
        optimizer = self._optimizer
        stepped = own + (list(optimizer.variables) if optimizer is not None else [])
        # Metrics last: a metric built after the shadows were made only goes uncopied, never misaligns the rest.
        return stepped + [v for v in getattr(self.watched, "metrics_variables", [])
                          if not any(v is other for other in stepped)]

    def _scaler(self):
        """The ``LossScaleOptimizer`` in charge, or None without mixed precision."""
        optimizer = self._optimizer
        return optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else None

    # -- the per-step machinery ----------------------------------------------------------------------------------
    def _build(self) -> None:
        """Create the shadows and the status once, under the model's distribution strategy."""
        if self._built:
            return
        if not self._trainable():
            raise NanlabError("nanlab.watch needs a model with its weights: call it once on a batch, or give "
                              "keras.Input")
        optimizer = self._optimizer
        if optimizer is not None and not optimizer.built:
            with self._strategy.scope():
                optimizer.build(self._trainable())
        with self._strategy.scope():
            variables = self._variables()
            self._shadows = [tf.Variable(tf.zeros(v.shape, v.dtype), **MIRRORED) for v in variables]
            self._step_loss = tf.Variable(tf.zeros((), tf.float64), **ACCUMULATING)
            self._step_norm = tf.Variable(tf.zeros((), tf.float64), **ACCUMULATING)
            self._step_bad_labels = tf.Variable(tf.zeros((), tf.float64), **ACCUMULATING)
            self._status = tf.Variable(tf.zeros(len(STATUS), tf.float64), **ACCUMULATING)
        self._batch_vars = None
        # Fresh functions per watch (not tf.function of the methods, which TensorFlow counts as one function
        # retraced for every new watch, and warns about on stderr).
        self._open_fn = tf.function(lambda: self._begin_step())
        self._close_fn = tf.function(lambda: self._publish_status())
        self._built = True

    def _begin_step(self) -> None:
        """Copy every variable into its shadow and zero the step's accumulators (inside the step's graph)."""
        for shadow, variable in zip(self._shadows, self._variables()):
            shadow.assign(_read(variable))
        for accumulator in (self._step_loss, self._step_norm, self._step_bad_labels):
            accumulator.assign(tf.zeros((), tf.float64))

    def _publish_status(self) -> None:
        """``STATUS`` in one vector; under tf.distribute each replica adds its share, so replicated values divide."""
        replicas = tf.cast(self._strategy.num_replicas_in_sync, tf.float64)
        scaler = self._scaler()
        scale = tf.cast(scaler.dynamic_scale, tf.float64) if scaler is not None else tf.zeros((), tf.float64)
        self._status.assign(tf.stack([self._step_loss.read_value(), self._step_norm.read_value() / replicas,
                                      self._step_bad_labels.read_value(), scale / replicas]))

    def _record_loss(self, loss) -> None:
        self._step_loss.assign_add(tf.cast(tf.reduce_sum(loss), tf.float64))

    def _checked_labels(self, y, y_pred):
        """``y`` with out-of-range class ids counted and replaced by 0 (the step is then undone and reported)."""
        if not are_class_ids(y, y_pred):
            return y
        num_classes = int(y_pred.shape[-1])
        bad = tf.logical_or(y < 0, y >= tf.cast(num_classes, y.dtype))
        self._step_bad_labels.assign_add(tf.reduce_sum(tf.cast(bad, tf.float64)))
        return tf.where(bad, tf.zeros_like(y), y)

    def _watch_optimizer(self) -> None:
        """Record the norm of the gradients the optimizer is given, in the same graph as its update."""
        optimizer = self._optimizer
        if optimizer is None or "apply" in optimizer.__dict__:
            return
        original = optimizer.apply

        def apply(grads, trainable_variables=None):
            self._record_gradient_norm(grads)
            return original(grads, trainable_variables)

        optimizer.apply = apply

    def _unwatch_optimizer(self) -> None:
        optimizer = self._optimizer
        if optimizer is not None:
            optimizer.__dict__.pop("apply", None)

    def _record_gradient_norm(self, grads) -> None:
        grads = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads if g is not None]
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)  # the gradient of the global batch
        norm = global_norm(grads)
        scaler = self._scaler()
        if scaler is not None:
            norm = norm / tf.cast(scaler.dynamic_scale, tf.float64)  # in the loss's own units
        self._step_norm.assign(norm)

    # -- the one host synchronisation per step -------------------------------------------------------------------
    def _check(self) -> None:
        loss, norm, bad_labels, scale = self._status.numpy().tolist()
        step = self.step
        scaler = self._scaler()
        if scaler is not None:
            self.history.loss_scales.append(scale)
        if bad_labels == 0 and math.isfinite(loss) and math.isfinite(norm):
            self.history.losses.append(loss)
            self.history.grad_norms.append(norm)
            self.step += 1
            return
        if scaler is not None and bad_labels == 0:
            # The loss scaler skipped this update itself: expected now and then, a fault once it persists.
            self.history.skipped_steps.append(step)
            if not self.policy.overflow_persists(self.history, step):
                self.step += 1
                return
            self._fault(loss, norm, overflow=True)
        else:
            self._fault(loss, norm, overflow=False)

    def _fault(self, loss: float, norm: float, overflow: bool) -> None:
        report = self._diagnose(loss, norm, overflow)
        self.report = report
        if self.policy.on_nonfinite == "stop":
            self.stopped = True
            if self._fitting:
                self.watched.stop_training = True
            return
        if self.policy.on_nonfinite == "skip":
            if not overflow:
                self.history.skipped_steps.append(self.step)
            in_a_row = self.history.skipped_in_a_row(self.step)
            if in_a_row < self.policy.max_skips:
                LOGGER.warning("nanlab.watch skipped step %d: %s", self.step, report)
                self.step += 1
                return
            report.note = ((report.note + " ") if report.note else "") + f"Gave up after {in_a_row} skipped steps " \
                                                                         "in a row."
        self._detach()
        raise NonFiniteError(report)

    def _diagnose(self, loss: float, norm: float, overflow: bool) -> NonFiniteReport:
        """Replay the step (leaving the variables as they were before it) and conclude; without the replay module,
        say so and still restore the variables."""
        report = NonFiniteReport("tensorflow", self.step, _cheap_phase(loss, norm), losses=list(self.history.losses),
                                 grad_norms=list(self.history.grad_norms), norm_name="gradient norm")
        report.optimizer = self._optimizer_facts()
        scaler = self._scaler()
        if scaler is not None:
            report.loss_scale = self.history.loss_scales[-1]
            report.skipped_in_a_row = self.history.skipped_in_a_row(self.step)
        spoiled = self._spoiled_before_step()
        if spoiled:
            return conclude(self._bad_update_report(report, spoiled))
        try:
            from nanlab.frameworks.tensorflow import replay
        except ImportError as missing:
            self._restore()
            report.note = f"Localisation was unavailable (the replay could not import: {missing})."
            return conclude(report)
        self._restore()
        replay.replay(self._failed_step(report))
        self._restore()  # the replay's forward pass may have moved BatchNorm statistics or the loss scale
        if overflow and report.dtype is None:
            report.note = "The loss scaler kept skipping, but the replay found no op past its dtype's range."
        return conclude(report)

    def _spoiled_before_step(self) -> list:
        """Trainable variables that were already non-finite when this step began (read from their copies, on
        failure only): then the previous step's update made them so, with finite loss and gradients."""
        trainable = {id(v) for v in self._trainable()}
        return [v for v, shadow in zip(self._variables(), self._shadows)
                if id(v) in trainable and not np.isfinite(shadow.numpy()).all()]

    def _bad_update_report(self, report: NonFiniteReport, spoiled: list) -> NonFiniteReport:
        """The previous step's optimizer update is the fault; its weights from before it are no longer kept."""
        report.step = max(self.step - 1, 0)
        report.phase, report.op = "optimizer update", "apply_gradients"
        report.module = report.optimizer.get("name")
        report.parameter = variable_path(spoiled[0], self.watched)
        dtype = spoiled[0].dtype.name if hasattr(spoiled[0].dtype, "name") else str(spoiled[0].dtype)
        if dtype in HALF_RANGES:
            report.dtype, report.dtype_max = dtype, HALF_RANGES[dtype]
        report.note = "The weights stay as that update left them (the watch keeps one step's copy)."
        return report

    def _optimizer_facts(self) -> dict:
        """What the cause rules may ask of the optimizer, as plain numbers and names."""
        optimizer = self._optimizer
        if optimizer is None:
            return {}
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        facts = {"name": type(inner).__name__, "learning_rate": float(np.asarray(inner.learning_rate))}
        for name in ("epsilon", "beta_1", "beta_2", "momentum", "clipnorm", "global_clipnorm", "clipvalue"):
            value = getattr(inner, name, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                facts[name] = float(value)
        trainable = self._trainable()
        if trainable:
            facts["param_dtype"] = tf.as_dtype(trainable[0].dtype).name
        return facts

    def _restore(self) -> None:
        for variable, shadow in zip(self._variables(), self._shadows):
            variable.assign(_read(shadow))

    def _failed_step(self, report: NonFiniteReport) -> FailedStep:
        x, y, sample_weight = self._saved_batch()
        scaler = self._scaler()
        optimizer = self._optimizer
        return FailedStep(report=report, model=self.watched, trainable=self._trainable(), x=x, y=y,
                          sample_weight=sample_weight, forward=self._forward(), compute_loss=self._loss_for_replay(),
                          scale_loss=scaler.scale_loss if scaler is not None else (lambda loss: loss),
                          apply=optimizer.apply,
                          optimizer_name=type(getattr(scaler, "inner_optimizer", optimizer)).__name__)

    def _forward(self) -> Callable | None:
        if isinstance(self.watched, keras.Model):
            return lambda x: self.watched(x, training=True)
        if callable(self.watched) and not isinstance(self.watched, list):
            return self.watched
        return None

    def _loss_for_replay(self) -> Callable | None:
        if self._fitting:
            compute_loss = self._original_compute_loss
            return lambda x, y, y_pred, sample_weight: compute_loss(x=x, y=y, y_pred=y_pred,
                                                                    sample_weight=sample_weight, training=True)
        if self._user_loss is None:
            return None
        return lambda x, y, y_pred, sample_weight: self._user_loss(y, y_pred)

    def _saved_batch(self):
        if not self._fitting:
            x, y = tf.nest.map_structure(_as_tensor, self._batch)
            return x, y, None
        strategy = self._strategy
        parts = [tf.concat(strategy.experimental_local_results(variable), axis=0) if variable.shape.rank != 0
                 else _read(variable) for variable in self._batch_vars]
        rows = int(sum(int(r) for r in strategy.experimental_local_results(self._batch_rows)))
        return keras.utils.unpack_x_y_sample_weight(
            tf.nest.pack_sequence_as(self._batch_structure, [part[:rows] if part.shape.rank else part
                                                             for part in parts]))

    # -- model.fit -----------------------------------------------------------------------------------------------
    def set_model(self, model) -> None:
        super().set_model(model)
        if model is not self.watched:
            raise NanlabError("this watch was made for another model; use nanlab.watch(model) with fit's model")
        _refuse_steps_per_execution(model)
        self._build()
        self._fitting = True
        self._batch_vars = None  # sized afresh by this fit's first batch
        self._original_train_step = model.train_step
        self._original_compute_loss = model.compute_loss
        model.train_step = self._watched_train_step
        model.compute_loss = self._watched_compute_loss
        self._watch_optimizer()
        model.train_function = None  # rebuilt by fit around the watched step

    def _watched_train_step(self, data):
        self._save_batch(data)
        self._begin_step()
        logs = self._original_train_step(data)
        self._publish_status()
        return logs

    def _watched_compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, **kwargs):
        y = _map_targets(self._checked_labels, y, y_pred)
        loss = self._original_compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, **kwargs)
        if loss is not None:
            self._record_loss(loss)
        return loss

    def _save_batch(self, data) -> None:
        flat = tf.nest.flatten(data)
        if self._batch_vars is None:  # first trace only: tf.function allows variables created on the first call
            self._batch_structure = data
            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1:
                context.merge_call(lambda strategy: self._create_batch_buffers(flat))  # variables: cross-replica
            else:
                self._create_batch_buffers(flat)
        rows = tf.shape(flat[0])[0]
        for variable, tensor in zip(self._batch_vars, flat):
            if variable.shape.is_fully_defined() and variable.shape.rank:
                variable[:rows].assign(tensor)
            else:
                variable.assign(tensor)
        self._batch_rows.assign(rows)

    def _create_batch_buffers(self, flat) -> None:
        with tf.init_scope(), self._strategy.scope():
            compiled = bool(getattr(self.watched, "jit_compile", False))
            self._batch_vars = [_batch_buffer(t, compiled) for t in flat]
            self._batch_rows = tf.Variable(0, dtype=tf.int32, **PER_REPLICA)

    def on_train_batch_end(self, batch, logs=None) -> None:
        if not self.stopped:
            self._check()

    def on_train_end(self, logs=None) -> None:
        self._detach()

    def _detach(self) -> None:
        """Give the model back its own train step, loss and optimizer (a later fit without the watch is plain)."""
        if self._fitting:
            self.watched.__dict__.pop("train_step", None)
            self.watched.__dict__.pop("compute_loss", None)
            self.watched.train_function = None
            self._fitting = False
        self._unwatch_optimizer()
        if self.training is not None and self._user_batches is not None:
            self.training.loss_fn, self.training.batches = self._user_loss, self._user_batches
            self._user_batches = None

    # -- GradientTape loops --------------------------------------------------------------------------------------
    def __enter__(self) -> "KerasWatch":
        if self.optimizer is None:
            raise NanlabError("nanlab.watch around a GradientTape loop needs its optimizer: "
                              "nanlab.watch(model, optimizer, loss_fn)")
        self._build()
        self._watch_optimizer()
        self._user_batches = None
        if self.training is not None:
            self.training.loss_fn = self.loss_fn
            self._user_batches = self.training.batches
            self.training.batches = self._watched_batches()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None and self._open:
                self._close_step()
        finally:
            self._detach()

    def _watched_batches(self):
        for x, y in self._user_batches:
            if self._open:
                self._close_step()
            if self.stopped:
                return
            self._open_step(x, y)
            yield x, y

    @contextmanager
    def checked_step(self, x, y):
        """One training step of a GradientTape loop: the variables are copied before it and checked after it."""
        self._open_step(x, y)
        yield self
        self._close_step()

    def _open_step(self, x, y) -> None:
        self._batch, self._open = (x, y), True
        self._open_fn()

    def _close_step(self) -> None:
        self._open = False
        self._close_fn()
        self._check()

    def loss_fn(self, y_true, y_pred, *args, **kwargs):
        """Your loss function, unchanged, with its value recorded and its class labels checked."""
        if self._user_loss is None:
            raise NanlabError("watch.loss_fn needs the loss function: nanlab.watch(model, optimizer, loss_fn)")
        loss = self._user_loss(self._checked_labels(_as_tensor(y_true), y_pred), y_pred, *args, **kwargs)
        self._record_loss(loss)
        return loss


def _watchable(model):
    """A ``keras.Model``, a ``tf.Module`` or a list of ``tf.Variable``s, or a one-line NanlabError."""
    if isinstance(model, (keras.Model, tf.Module)):
        return model
    if isinstance(model, (list, tuple)) and model and all(isinstance(v, tf.Variable) for v in model):
        return list(model)
    raise NanlabError(f"nanlab.watch needs a keras.Model, a tf.Module or a list of tf.Variable (or a Training), "
                      f"got {type(model).__name__}")


def _refuse_steps_per_execution(model) -> None:
    steps = getattr(model, "steps_per_execution", 1)
    if isinstance(model, keras.Model) and steps != 1:
        raise NanlabError(f"nanlab.watch checks every step, so it needs compile(steps_per_execution=1) "
                          f"(got {steps})")


def variable_path(variable, model) -> str:
    """A variable's path inside ``model`` (``head/bias``), without the model's own name."""
    path = getattr(variable, "path", None) or variable.name.split(":")[0]
    prefix = f"{getattr(model, 'name', '')}/"
    return path[len(prefix):] if path.startswith(prefix) else path


def _as_tensor(value):
    """NumPy batches as tensors (what the label check and the replay read); anything else unchanged."""
    return tf.convert_to_tensor(value) if isinstance(value, np.ndarray) else value


def _read(variable):
    """A variable's value (a Keras variable's ``.value`` is its tf.Variable; a tf.Variable's ``.value`` is a method)."""
    return variable.value if isinstance(variable, keras.Variable) else variable.read_value()


def are_class_ids(y, y_pred) -> bool:
    """True when ``y`` holds one class id per prediction row: the signature of a sparse categorical loss."""
    if not (isinstance(y, (tf.Tensor, tf.Variable)) and isinstance(y_pred, (tf.Tensor, tf.Variable))):
        return False
    classes = y_pred.shape[-1] if y_pred.shape.rank else None
    if classes is None or classes < 2 or y.shape.rank is None:
        return False
    if y.dtype.is_integer:
        return y.shape.rank == y_pred.shape.rank - 1 or (y.shape.rank == y_pred.shape.rank and y.shape[-1] == 1)
    return y.dtype.is_floating and y.shape.rank == y_pred.shape.rank - 1


def _map_targets(function, y, y_pred):
    """``function(target, prediction)`` over matching targets and outputs (one each, a list, or a dict); targets
    that do not pair with the outputs one to one (a custom loss) are returned unchanged."""
    if isinstance(y, dict) and isinstance(y_pred, dict) and y.keys() <= y_pred.keys():
        return {name: function(target, y_pred[name]) for name, target in y.items()}
    if isinstance(y, (list, tuple)) and isinstance(y_pred, (list, tuple)) and len(y) == len(y_pred):
        return type(y)(function(target, prediction) for target, prediction in zip(y, y_pred))
    return function(y, y_pred)


def _cheap_phase(loss: float, norm: float) -> str:
    """The phase the status vector alone supports, for a report without a replay."""
    if not math.isfinite(loss):
        return "loss"
    return "backward" if not math.isfinite(norm) else "data"


def global_norm(grads) -> tf.Tensor:
    """The global L2 norm of ``grads`` as a float64 scalar.

    One float32 ``l2_loss`` per tensor (one op each: the per-op cost, not the arithmetic, is what a small model's
    step pays for); the exact float64 sum runs only when the float32 one is not finite, which happens for a
    non-finite gradient or a norm past ~2.6e19, where float32's sum of squares overflows.
    """
    if not grads:
        return tf.zeros((), tf.float64)
    fast = tf.sqrt(2.0 * tf.add_n([tf.nn.l2_loss(tf.cast(g, tf.float32)) for g in grads]))
    return tf.cond(tf.math.is_finite(fast), lambda: tf.cast(fast, tf.float64),
                   lambda: tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(tf.cast(g, tf.float64))) for g in grads])))


def _batch_buffer(tensor, compiled: bool) -> tf.Variable:
    """A variable to keep one batch tensor in, for the replay.

    Under XLA (``compiled``) a fixed buffer sized by the first batch and filled row by row, since XLA cannot give a
    variable a new shape; a later batch may be smaller (an epoch's last), never larger. Otherwise a variable of
    unknown shape that each batch replaces whole (one assign, none of the slicing a fixed buffer needs). Each
    replica keeps its own share under tf.distribute.
    """
    if compiled and tensor.shape.is_fully_defined():
        return tf.Variable(tf.zeros(tensor.shape, tensor.dtype), **PER_REPLICA)
    return tf.Variable(tf.zeros([0] * len(tensor.shape), tensor.dtype), shape=tf.TensorShape(None), **PER_REPLICA)


def watch(model, optimizer=None, loss_fn=None, training=None, *, on_nonfinite: str = "raise", max_skips: int = 5,
          overflow_patience: int = 10, min_loss_scale: float = 1.0) -> KerasWatch:
    """``nanlab.watch`` for a ``keras.Model``, a ``tf.Module``, a list of ``tf.Variable``s (or a nanlab ``Training``).

    The keywords are the ``nanlab.watching.WatchPolicy``: what to do on a non-finite step, and how much loss-scaler
    skipping is tolerated under mixed precision.
    """
    policy = WatchPolicy(on_nonfinite=on_nonfinite, max_skips=max_skips, overflow_patience=overflow_patience,
                         min_loss_scale=min_loss_scale)
    return KerasWatch(model, optimizer, loss_fn, training=training, policy=policy)
