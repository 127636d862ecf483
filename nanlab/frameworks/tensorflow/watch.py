"""``nanlab.watch`` for TensorFlow/Keras, the cheap per-step layer: a callback for ``model.fit`` and a context for
GradientTape loops (a ``keras.Model``, a ``tf.Module`` or a list of ``tf.Variable``s, with a Keras optimizer).

While training is healthy the watch works inside the step itself, with no host traffic. It fills one float64 status
vector (``STATUS``): the step's loss, the norm of the gradients the optimizer was given (in the loss's own units:
divided by the loss scale under a ``LossScaleOptimizer``), the number of out-of-range class labels, the loss scale
the step used and the one after it, and the learning rate the update takes (a schedule's value at that step). It
reads that vector once per step (one host synchronisation); nothing runs per layer. A list of variables has no
forward pass to replay, so there ``watch.loss_fn`` also keeps the targets and predictions it was given (one
assignment each per step) for the replay to run the loss alone.

The check decides before the update, as the PyTorch watch does: the watched ``optimizer.apply`` measures the
gradients and applies the update only when the loss, the gradients and the labels are fine (under a loss scaler,
also when the gradients overflowed: the scaler then skips the step itself, as it should). So at a bad step the
trainable weights and the optimizer's state are still those the step began with, and nothing is copied for them.
What the forward pass itself changes is small and copied before each step: the model's non-trainable variables
(BatchNorm's moving statistics, dropout's seed state; the frozen layers' weights are left out) and the metrics'
variables (fit's running loss); a bad step's values are put back from those copies. The batch is kept too (a
replay runs it again). A weight that an update made non-finite from finite gradients (Adam's epsilon in float16)
shows at the next step, whose loss or gradients it spoils: the watch then checks the trainable weights (on that bad
step only) and reports the previous step's update.

What deciding before the update costs: every gradient of the step stays alive until the decision, as PyTorch's
``.grad`` always keeps them, where a plain Keras step may apply one layer's update (and free its gradient) while
backpropagation goes on through the others. Where the weights and the optimizer's state are most of the memory (a
10.5M-parameter MLP with Adam: 1.4x-1.5x TensorFlow's peak allocation, 1.08x the process's) that is about one
gradient's worth more at the peak, and the updates wait for the end of backpropagation; where activations dominate
(the benchmarks' transformer block: about 1.0x), or where the plain step holds every gradient anyway
(``global_clipnorm``: 1.07x), little (``benchmarks/RESULTS.md``). The copies of every variable the watch took before
(three times the parameters with Adam) cost more.

Integer labels are checked before the loss runs: the bad ones are counted and replaced by class 0 for that step,
whose update is then held back. So an out-of-range label becomes a report on every device, instead of an
``InvalidArgumentError`` on CPU and a silent NaN on GPU or under XLA. Whether targets are class ids is decided by
``nanlab.evidence.class_id_targets``: integer targets by their shape, floating ones only under a sparse categorical
loss (a regression head's float targets never are).

At a bad step the watch hands the ``WatchCore`` (``nanlab.watching.core``) a function that gathers the evidence:
it imports ``replay`` (which, with ``private``, holds every TensorFlow and Keras internal nanlab touches) to
localise the step from a snapshot taken then, and puts every variable back afterwards; when that import fails,
training with the watch still works and the report says localisation was unavailable. The core concludes and
raises, stops or skips as the ``WatchPolicy`` says. Under mixed precision an overflow the loss scaler skips is
expected: it is recorded in ``history.skipped_steps``, and only an overflow that persists is a fault.
"""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from typing import Callable

import numpy as np

from nanlab.errors import NanlabError, NonFiniteError
from nanlab.frameworks.tensorflow import private
from nanlab.frameworks.tensorflow.backend import keras, tf
from nanlab.frameworks.tensorflow.names import (OP_FAMILIES, class_ids, dtype_name, is_sparse_loss, optimizer_facts,
                                                variable_path)
from nanlab.frameworks.tensorflow.records import BadStep
from nanlab.report import NonFiniteReport, spoiled_by_update
from nanlab.watching.core import WatchCore, WatchSurface
from nanlab.watching.policy import WatchPolicy
from nanlab.watching.vocabulary import DTYPE_MAX, HALF_PRECISION, Phase, op_family

LOG = logging.getLogger("nanlab.watch")
OPTIONS: tuple[str, ...] = ()
STATUS = ("loss", "gradient norm", "bad labels", "loss scale after", "loss scale used", "losses seen", "learning rate")
LOSS, GRAD_NORM, BAD_LABELS, SCALE_AFTER, SCALE, LOSSES_SEEN, LEARNING_RATE = range(len(STATUS))
ACCUMULATING = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                    aggregation=tf.VariableAggregation.SUM)  # per replica under tf.distribute; read as their sum
PER_REPLICA = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                   aggregation=tf.VariableAggregation.NONE)
MIRRORED = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
class Watch(WatchSurface, keras.callbacks.Callback):
    """``model.fit(..., callbacks=[nanlab.watch(model)])``, or, around a GradientTape loop::

        with nanlab.watch(model, optimizer, loss_fn) as watch:
            for x, y in batches:
                with watch.checked_step(x, y):
                    ...  # loss = watch.loss_fn(y, model(x)); optimizer.apply(gradients, variables)
                if watch.stopped:
                    break

    ``model`` is a ``keras.Model``, a callable ``tf.Module`` or a list of ``tf.Variable``s; a nanlab ``Training`` is
    watched with ``with nanlab.watch(training):``. The attributes are the PyTorch watch's: ``step`` (steps checked
    so far), ``history`` (a ``WatchHistory``: losses, gradient norms in unscaled units, skipped steps, loss scales),
    ``report`` (the last ``NonFiniteReport`` or None), ``stopped`` (``on_nonfinite="stop"`` ended training: ``fit``
    ends through ``stop_training``, a loop checks ``if watch.stopped: break``) and ``policy`` (a ``WatchPolicy``).
    """

    def __init__(self, model, optimizer: keras.optimizers.Optimizer | None = None, loss_fn: Callable | None = None,
                 training=None, policy: WatchPolicy | None = None):
        super().__init__()
        self.watched = _watchable(model)
        self.optimizer, self.training = optimizer, training
        self.core = WatchCore(policy)
        self._user_loss = loss_fn
        self._sparse_loss = is_sparse_loss(loss_fn)
        self._built = False
        self._fitting = False
        self._batch = None
        self._user_batches = None
        self._loss_inputs = None  # variables holding what the step gave loss_fn, for a list of variables' replay
        self._open = False
        self._original_apply = None
        self._ran: set[str] = set()  # which shadowed methods ran (set while tracing): see private.HOOKS
        self._moved: set[str] = set()  # the shadowed methods found not to run: the hooks that moved
        self._checked_hooks = False
        self._state_saved = False
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

    def _forward_state(self) -> list:
        """What a forward pass changes besides the weights: the non-trainable variables (BatchNorm's moving
        statistics, seed states) except the floating weights of frozen layers, which a forward pass leaves alone,
        and, for a keras.Model, its metrics' variables (fit's running loss)."""
        if isinstance(self.watched, list):
            return [v for v in self.watched if not v.trainable]
        if not isinstance(self.watched, keras.Layer):
            return [v for v in self.watched.variables if not v.trainable]
        layers, _ = private.flatten_layers(self.watched, include_self=True)
        frozen = {id(v) for layer in layers if not layer.trainable for v in layer.weights
                  if tf.as_dtype(v.dtype).is_floating}
        state, seen = [], set()
        for v in list(self.watched.non_trainable_variables) + list(getattr(self.watched, "metrics_variables", [])):
            if id(v) not in frozen and id(v) not in seen:
                seen.add(id(v))
                state.append(v)
        return state

    def _all_variables(self) -> list:
        """Every variable a step or a replay may change: the model's, the optimizer's and the metrics'."""
        own = self.watched if isinstance(self.watched, list) else list(self.watched.variables)
        optimizer = self._optimizer
        every = own + (list(optimizer.variables) if optimizer is not None and optimizer.built else [])
        every += list(getattr(self.watched, "metrics_variables", []))
        unique, seen = [], set()
        for v in every:
            if id(v) not in seen:
                seen.add(id(v))
                unique.append(v)
        return unique

    def _scaler(self):
        """The ``LossScaleOptimizer`` in charge, or None without mixed precision."""
        optimizer = self._optimizer
        return optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else None

    # -- the per-step machinery ----------------------------------------------------------------------------------
    def _build(self) -> None:
        """Create the forward state's copies and the status once, under the model's distribution strategy."""
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
            self._state = self._forward_state()
            self._state_copies = [tf.Variable(tf.zeros(v.shape, v.dtype), **MIRRORED) for v in self._state]
            self._step_loss, self._step_losses_seen, self._step_bad_labels, self._step_norm, self._step_scale, \
                self._step_rate = (tf.Variable(tf.zeros((), tf.float64), **ACCUMULATING) for _ in range(6))
            self._status = tf.Variable(tf.zeros(len(STATUS), tf.float64), **ACCUMULATING)
        self._batch_vars = None
        # Fresh functions per watch (not tf.function of the methods, which TensorFlow counts as one function
        # retraced for every new watch, and warns about on stderr).
        self._open_fn = tf.function(lambda: self._begin_step())
        self._close_fn = tf.function(lambda: self._publish_status())
        self._built = True

    def _begin_step(self) -> None:
        """Copy the forward state and zero the step's accumulators (inside the step's graph)."""
        for copy, variable in zip(self._state_copies, self._state):
            copy.assign(_read(variable))
        for accumulator in (self._step_loss, self._step_losses_seen, self._step_bad_labels, self._step_norm,
                            self._step_scale, self._step_rate):
            accumulator.assign(tf.zeros((), tf.float64))

    def _publish_status(self) -> None:
        """``STATUS`` in one vector; under tf.distribute each replica adds its share, so replicated values divide."""
        replicas = tf.cast(self._strategy.num_replicas_in_sync, tf.float64)
        scaler = self._scaler()
        after = tf.cast(scaler.dynamic_scale, tf.float64) if scaler is not None else tf.zeros((), tf.float64)
        self._status.assign(tf.stack([self._step_loss.read_value(), self._step_norm.read_value() / replicas,
                                      self._step_bad_labels.read_value(), after / replicas,
                                      self._step_scale.read_value() / replicas, self._step_losses_seen.read_value(),
                                      self._step_rate.read_value() / replicas]))

    def _record_loss(self, loss) -> None:
        self._step_loss.assign_add(tf.cast(tf.reduce_sum(loss), tf.float64))
        self._step_losses_seen.assign_add(tf.ones((), tf.float64))

    def _checked_labels(self, y, y_pred):
        """``y`` with out-of-range class ids counted and replaced by 0 (the step's update is then held back)."""
        if not class_ids(y, y_pred, self._sparse_loss) or y_pred.shape[-1] is None:
            return y
        num_classes = int(y_pred.shape[-1])
        bad = tf.logical_or(y < 0, y >= tf.cast(num_classes, y.dtype))
        self._step_bad_labels.assign_add(tf.reduce_sum(tf.cast(bad, tf.float64)))
        return tf.where(bad, tf.zeros_like(y), y)

    def _watch_optimizer(self) -> None:
        """Decide in the optimizer's ``apply``, before the update, whether to apply it (``private.hook_apply``)."""
        optimizer = self._optimizer
        if optimizer is None:
            return
        original = private.hook_apply(optimizer, self._watched_apply)
        if original is not None:
            self._original_apply = original

    def _unwatch_optimizer(self) -> None:
        optimizer = self._optimizer
        if optimizer is not None and self._original_apply is not None:
            private.unhook_apply(optimizer)

    def _watched_apply(self, grads, trainable_variables=None):
        self._ran.add("apply")
        grads = list(grads)
        go = self._status_before_update(grads)
        apply = self._original_apply
        context = tf.distribute.get_replica_context()
        if tf.distribute.has_strategy() and context is not None:
            # As LossScaleOptimizer does under tf.distribute: a cond whose branch calls merge_call (the update
            # does) must run in the cross-replica context; every replica computed the same decision.
            def cross_replica(distribution, go, grads, variables):
                first = distribution.experimental_local_results(go)[0]
                tf.cond(first, lambda: distribution.extended.call_for_each_replica(apply, args=(grads, variables)),
                        lambda: None)

            context.merge_call(cross_replica, args=(go, grads, trainable_variables))
        else:
            tf.cond(go, lambda: apply(grads, trainable_variables), lambda: None)

    def _learning_rate(self) -> tf.Tensor:
        """The rate this step's update takes, as float64: the optimizer's ``learning_rate`` (a schedule's value at
        its ``iterations``, which the update has not advanced yet), the inner optimizer's under a loss scaler."""
        optimizer = self._optimizer
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        return tf.cast(inner.learning_rate, tf.float64)

    def _status_before_update(self, grads) -> tf.Tensor:
        """Record the norm of the gradients the optimizer is given, in the same graph as its update, and return
        whether to apply the update: loss, gradients and labels fine (under a loss scaler also an overflow of the
        gradients, which the scaler skips itself)."""
        present = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads if g is not None]
        loss, bad_labels = self._step_loss.read_value(), self._step_bad_labels.read_value()
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            # the gradient of the global batch; the loss and the bad labels of every replica
            present = context.all_reduce(tf.distribute.ReduceOp.SUM, present)
            loss, bad_labels = context.all_reduce(tf.distribute.ReduceOp.SUM, [loss, bad_labels])
        norm = global_norm(present)
        scaler = self._scaler()
        if scaler is not None:
            scale = tf.cast(scaler.dynamic_scale, tf.float64)
            norm = norm / scale  # in the loss's own units
            self._step_scale.assign(scale)
        self._step_norm.assign(norm)
        self._step_rate.assign(self._learning_rate())
        labels_fine = tf.equal(bad_labels, 0.0)
        finite_norm = tf.math.is_finite(norm)
        if scaler is not None:
            return tf.logical_and(labels_fine, tf.logical_or(tf.math.is_finite(loss), tf.logical_not(finite_norm)))
        return tf.logical_and(labels_fine, tf.logical_and(tf.math.is_finite(loss), finite_norm))

    # -- the one host synchronisation per step -------------------------------------------------------------------
    def _check(self) -> None:
        status = self._status.numpy().tolist()
        self._check_hooks()
        has_loss = status[LOSSES_SEEN] > 0
        loss, norm, bad_labels = status[LOSS], status[GRAD_NORM], status[BAD_LABELS]
        scaled = self._scaler() is not None
        if bad_labels == 0 and (math.isfinite(loss) or not has_loss) and math.isfinite(norm):
            self.core.healthy(loss if has_loss else None, norm, status[SCALE_AFTER] if scaled else None,
                              status[LEARNING_RATE] if self._optimizer is not None else None)
            return
        overflow = scaled and bad_labels == 0 and not math.isfinite(norm)
        if overflow and not self.core.scaler_skipped(status[SCALE_AFTER]):
            return  # the loss scaler skipped this update itself: expected now and then
        self._fault(status, overflow)

    def _check_hooks(self) -> None:
        """Once, at the end of the first step: every shadowed method ran; one that did not is a hook that moved."""
        if self._checked_hooks:
            return
        self._checked_hooks = True
        expected = (["train_step", "compute_loss"] if self._fitting else []) + \
            (["apply"] if self._original_apply is not None else [])
        consequences = {
            "train_step": "fit's batches are no longer kept for a replay (the watch checks from its callback)",
            "compute_loss": "the loss and the class labels are no longer checked (the gradients still are)",
            "apply": "bad updates are no longer held back, so a bad step's update stays applied",
        }
        for name in expected:
            if name not in self._ran and name not in self._moved:
                self._moved.add(name)
                LOG.warning("nanlab.watch: %s", private.moved(private.HOOKS[name], consequences[name]))

    def _fault(self, status: list[float], overflow: bool) -> None:
        try:
            self.core.fault(lambda: self._gather(status, overflow), _held_back)
        except NonFiniteError:
            self._detach()
            raise
        if self.core.stopped and self._fitting:
            self.watched.stop_training = True

    # -- a bad step: gather the evidence -------------------------------------------------------------------------
    def _gather(self, status: list[float], overflow: bool) -> NonFiniteReport:
        """The evidence of the bad step: the forward state is put back first (the update was held back), then the
        replay runs from a snapshot of every variable, which is put back afterwards."""
        self._restore_state()
        report = self._base_report(status, overflow)
        spoiled = self._nonfinite_weights() if "apply" not in self._moved else []
        if spoiled:
            return self._update_report(report, spoiled, found_at=self.core.step)
        if "apply" in self._moved:
            report.note = "Localisation was unavailable: " + private.moved(
                private.HOOKS["apply"], "this step's update could not be held back, and was applied.")
            return report
        if "train_step" in self._moved:
            report.note = "Localisation was unavailable: " + private.moved(
                private.HOOKS["train_step"], "fit's batch was not kept for a replay.")
            return report
        try:
            from nanlab.frameworks.tensorflow import replay
        except ImportError as missing:
            report.note = f"Localisation was unavailable (the replay could not import: {missing})."
            return report
        snapshot = [(v, tf.identity(_read(v))) for v in self._all_variables()]
        try:
            replay.localise(self._bad_step(status, overflow), report)
        finally:
            for variable, value in snapshot:
                variable.assign(value)
        if overflow and report.dtype is None:
            report.note = "The loss scaler kept skipping, but the replay found no op past its dtype's range."
        return report

    def _base_report(self, status: list[float], overflow: bool) -> NonFiniteReport:
        """What the status vector alone says; the replay refines phase, module, op and samples."""
        has_loss = status[LOSSES_SEEN] > 0
        bad_labels = status[BAD_LABELS]
        phase = Phase.DATA if bad_labels > 0 else (
            Phase.LOSS if has_loss and not math.isfinite(status[LOSS]) else Phase.BACKWARD)
        scaled = self._scaler() is not None
        history = self.core.history
        report = NonFiniteReport("tensorflow", self.core.step, phase, losses=list(history.losses),
                                 grad_norms=list(history.grad_norms), norm_name="gradient norm",
                                 optimizer=optimizer_facts(self._optimizer, self._trainable(),
                                                           status[SCALE] if scaled else None))
        if bad_labels > 0:
            report.label_problem = f"{bad_labels:g} class labels out of range"
            report.data_findings = [report.label_problem]
        if scaled:
            report.loss_scale = status[SCALE_AFTER]
            report.skipped_in_a_row = history.skipped_in_a_row(self.core.step)
        return report

    def _nonfinite_weights(self) -> list:
        """The trainable variables that are non-finite now (read on a bad step only): the update of an earlier
        step made them so, from finite loss and gradients."""
        return [v for v in self._trainable() if not np.isfinite(np.asarray(_read(v))).all()]

    def _update_report(self, report: NonFiniteReport, spoiled: list, found_at: int | None = None) -> NonFiniteReport:
        """The previous step's optimizer update is the fault; the weights cannot be put back from before it."""
        report.step = max(self.core.step - 1, 0)
        report.phase, report.op = Phase.OPTIMIZER, "apply_gradients"
        report.op_family = op_family(report.op, OP_FAMILIES)
        report.module = report.optimizer.kind if report.optimizer is not None else None
        report.parameter = variable_path(spoiled[0], self.watched)
        report.label_problem, report.data_findings = None, []
        dtype = dtype_name(spoiled[0].dtype)
        if dtype in HALF_PRECISION:
            report.dtype, report.dtype_max = dtype, DTYPE_MAX[dtype]
        if found_at is not None:  # found at a later bad step, not as training ended
            report.note = spoiled_by_update(found_at, report.parameter)
        return report

    def _restore_state(self) -> None:
        """Put back what the bad step's forward pass changed (the update itself was held back)."""
        if self._fitting and "train_step" in self._moved and not self._state_saved:
            return  # the first step of a fit whose step hook moved: nothing was copied before it
        for variable, copy in zip(self._state, self._state_copies):
            variable.assign(_read(copy))

    def _bad_step(self, status: list[float], overflow: bool) -> BadStep:
        x, y, sample_weight = self._saved_batch()
        optimizer = self._optimizer
        scaler = self._scaler()
        if scaler is not None:
            used = tf.constant(status[SCALE], tf.float32)
            scale_loss = lambda loss: keras.ops.multiply(loss, used)  # noqa: E731 (the scale the step used)
        else:
            scale_loss = lambda loss: loss  # noqa: E731
        return BadStep(model=self.watched, trainable=self._trainable(), x=x, y=y, sample_weight=sample_weight,
                       forward=self._forward(), compute_loss=self._loss_for_replay(), scale_loss=scale_loss,
                       apply=self._original_apply or optimizer.apply,
                       optimizer_name=type(getattr(scaler, "inner_optimizer", optimizer)).__name__,
                       sparse_loss=self._sparse_loss, overflow=overflow,
                       loss_inputs=tuple(tf.identity(v) for v in self._loss_inputs) if self._loss_inputs else None)

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
        self._sparse_loss = is_sparse_loss(getattr(model, "loss", None))
        self._ran.clear()
        self._moved.clear()
        self._checked_hooks = False
        self._state_saved = False
        for accumulator in (self._step_loss, self._step_losses_seen, self._step_bad_labels, self._step_norm,
                            self._step_scale, self._step_rate):
            accumulator.assign(tf.zeros((), tf.float64))
        try:
            self._original_train_step, self._original_compute_loss = private.hook_train_step(
                model, self._watched_train_step, self._watched_compute_loss)
        except private.PrivateAPIMoved as moved:
            LOG.warning("nanlab.watch: %s", moved)
            self._moved.update(("train_step", "compute_loss"))
            self._original_train_step, self._original_compute_loss = model.train_step, model.compute_loss
        self._watch_optimizer()
        private.rebuild_train_function(model)  # fit builds its step function around the watched step

    def _watched_train_step(self, data):
        self._ran.add("train_step")
        self._save_batch(data)
        self._begin_step()
        logs = self._original_train_step(data)
        self._publish_status()
        return logs

    def _watched_compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, **kwargs):
        self._ran.add("compute_loss")
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

    def on_train_batch_begin(self, batch, logs=None) -> None:
        if "train_step" in self._moved:  # fit no longer runs the watched step: copy and zero from here
            self._open_fn()
            self._state_saved = True

    def on_train_batch_end(self, batch, logs=None) -> None:
        if self.stopped:
            return
        if "train_step" not in self._ran:
            self._close_fn()  # fit did not run the watched step (a hook that moved): publish from here
        self._check()

    def on_train_end(self, logs=None) -> None:
        self._detach()
        self._check_weights_at_end()

    def _check_weights_at_end(self) -> None:
        """A weight the last update made non-finite shows in no later step: look once, as training ends, and
        raise whatever the policy (nothing is left to drop or stop)."""
        if not self.core.step or self.stopped:
            return
        bad = self._nonfinite_weights()
        if bad:
            history = self.core.history
            report = NonFiniteReport("tensorflow", self.core.step, Phase.OPTIMIZER, losses=list(history.losses),
                                     grad_norms=list(history.grad_norms), norm_name="gradient norm",
                                     optimizer=optimizer_facts(self._optimizer, self._trainable()))
            self.core.fault_at_end(lambda: self._update_report(report, bad))

    def _detach(self) -> None:
        """Give the model back its own train step, loss and optimizer (a later fit without the watch is plain)."""
        if self._fitting:
            private.unhook_train_step(self.watched)
            private.rebuild_train_function(self.watched)
            self._fitting = False
        self._unwatch_optimizer()
        if self.training is not None:
            self.training.compiled_update = None  # traced afresh, around the optimizer's own apply
            self.training.watch = None
            if self._user_batches is not None:
                self.training.loss_fn, self.training.batches = self._user_loss, self._user_batches
                self._user_batches = None

    # -- GradientTape loops --------------------------------------------------------------------------------------
    def __enter__(self) -> "Watch":
        if self.optimizer is None:
            raise NanlabError("nanlab.watch around a GradientTape loop needs its optimizer: "
                              "nanlab.watch(model, optimizer, loss_fn)")
        self._build()
        self._watch_optimizer()
        self._user_batches = None
        if self.training is not None:
            self.training.compiled_update = None  # traced afresh, around the watched apply
            self.training.loss_fn, self.training.watch = self.loss_fn, self  # the loop goes on past skipped steps
            self._user_batches = self.training.batches
            self.training.batches = self._watched_batches()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None and self._open:
                self._close_step()
        finally:
            self._detach()
        if kind is None:
            self._check_weights_at_end()

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
        """One training step of a GradientTape loop: checked before its update and after it."""
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
        y_true = _as_tensor(y_true)
        loss = self._user_loss(self._checked_labels(y_true, y_pred), y_pred, *args, **kwargs)
        self._record_loss(loss)
        if isinstance(self.watched, list):
            self._keep_loss_inputs(y_true, y_pred)
        return loss

    def _keep_loss_inputs(self, y_true, y_pred) -> None:
        """A list of variables has no forward pass to replay: keep what the loss was given (one assignment of the
        targets and the predictions per step, inside the step), so that a bad step's loss can run again alone."""
        tensors = [tf.convert_to_tensor(y_true), tf.convert_to_tensor(y_pred)]
        if self._loss_inputs is None:  # first trace only: tf.function allows variables created on the first call
            with tf.init_scope():
                self._loss_inputs = [tf.Variable(tf.zeros([0] * (t.shape.rank or 0), t.dtype),
                                                 shape=tf.TensorShape(None), trainable=False) for t in tensors]
        for variable, tensor in zip(self._loss_inputs, tensors):
            variable.assign(tensor)


def _held_back() -> None:
    """The core's ``drop_update``: nothing left to do, the step's update was held back inside the step."""


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


def _as_tensor(value):
    """NumPy batches as tensors (what the label check and the replay read); anything else unchanged."""
    return tf.convert_to_tensor(value) if isinstance(value, np.ndarray) else value


def _read(variable):
    """A variable's value (a Keras variable's ``.value`` is its tf.Variable; a tf.Variable's ``.value`` is a method)."""
    return variable.value if isinstance(variable, keras.Variable) else variable.read_value()


def _map_targets(function, y, y_pred):
    """``function(target, prediction)`` over matching targets and outputs (one each, a list, or a dict); targets
    that do not pair with the outputs one to one (a custom loss) are returned unchanged."""
    if isinstance(y, dict) and isinstance(y_pred, dict) and y.keys() <= y_pred.keys():
        return {name: function(target, y_pred[name]) for name, target in y.items()}
    if isinstance(y, (list, tuple)) and isinstance(y_pred, (list, tuple)) and len(y) == len(y_pred):
        return type(y)(function(target, prediction) for target, prediction in zip(y, y_pred))
    return function(y, y_pred)


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


def watch(model, optimizer=None, loss_fn=None, training=None, *, policy: WatchPolicy, **options) -> Watch:
    """``nanlab.watch`` for a ``keras.Model``, a ``tf.Module``, a list of ``tf.Variable``s (or a nanlab ``Training``);
    ``policy`` is the ``WatchPolicy`` ``nanlab.watch`` built. TensorFlow's watch takes no options of its own."""
    if options:
        raise NanlabError(f"unknown nanlab.watch option {sorted(options)[0]!r} for TensorFlow/Keras")
    return Watch(model, optimizer, loss_fn, training=training, policy=policy)
