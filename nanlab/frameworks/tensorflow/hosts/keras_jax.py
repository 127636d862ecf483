"""Keras 3 on the JAX backend (``KERAS_BACKEND=jax``): ``model.fit(..., callbacks=[nanlab.watch(model)])``.

What works: detection of the first step whose loss or gradients are non-finite, before its update; the policies
``raise``, ``stop`` and ``skip`` with their meaning everywhere (the ``WatchCore`` acts); the history (each healthy
step's loss and global gradient norm); a ``NonFiniteReport`` naming the step, the phase (loss, backward, or an
earlier update that left a weight non-finite) and the weights whose gradients were non-finite. What does not: the
layer, the op and the samples. On JAX, ``fit`` runs each step as one compiled function (``jax.jit`` of
``train_step``); the batch and every intermediate value stay inside it and no Keras callback sees them, so there is
nothing to replay, and recording each batch would copy it out of every step. ``jax.experimental.checkify`` would
name the primitive, but it too needs the batch (and its NaN checks do not see an inf, such as log(0)'s). The report
says so, and how to localise: run the same Keras script with ``KERAS_BACKEND=torch``, where nanlab.watch replays the
step and names the layer, op and samples.

How: while ``fit`` runs, the model's optimizer is wrapped in ``FiniteGate``, a ``keras.optimizers.Optimizer`` that
does what ``keras.optimizers.LossScaleOptimizer`` does for overflowing fp16 steps: inside the compiled step it
checks the gradients and applies the inner optimizer's update under ``keras.ops.cond`` only when every gradient is
finite. Its ``scale_loss`` (which Keras' JAX trainer calls on the loss inside the gradient computation, as it does
for the loss scaler) multiplies the loss by 1 when it is finite and by NaN when it is not, so a non-finite loss
poisons every gradient and its update is dropped too (a finite loss is unchanged: x * 1.0 is exact). The step hands
its loss, each gradient's finiteness and the global gradient norm to the host with ``jax.debug.callback``, and
the watch decides at ``on_train_batch_end``. So at a bad step the trainable weights and the optimizer's state
(``iterations`` too) are those the step began with, whatever the policy: ``raise`` propagates ``NonFiniteError``
out of ``fit``, ``stop`` sets ``model.stop_training``, ``skip`` goes on to the next batch. The gate is put in place
at ``on_train_begin`` and the model's own optimizer given back at ``on_train_end`` (or before the raise), each time
with a fresh ``make_train_function``, so a later ``fit`` without the watch is plain.

What the bad step's forward pass wrote is not undone: the non-trainable variables (BatchNorm's moving statistics,
dropout's seed state) and fit's running metrics (the epoch's logged loss shows the NaN, as on the other backends).
The report names the non-trainable variables that step left non-finite (a NaN input through BatchNorm under
``skip``: its moving statistics stay NaN).

Cost per step: one reduction over the gradients (their finiteness and global norm) inside the compiled step, two
host callbacks with a few scalars, and one wait for them (``jax.effects_barrier``); no copy of the batch, the weights
or the gradients. Each ``fit`` under the watch traces and compiles its step afresh (through the gate), and the
plain step again after it. A bad step reads the trainable weights once (a weight an earlier update made
non-finite), as does the end of ``fit``. Measured on a busy 2-core CPU (one thread, Adam, batches of 32, an MLP
64-W-W-10, fits of 128 and 640 steps, per-step time from their difference): W=256 0.72 -> 2.35 ms per step, of
which the two ``jax.debug.callback`` calls are about 1.25 ms and the barrier 0.2 ms; W=1024 5.5 -> 7.7 ms (1.4x);
about 1 s more per ``fit`` for the fresh compile. Cheaper would be the status in the gate's own variables, read
through Keras' state sync, with the loss taken from fit's logs (not done).

Not covered (refused with a message): the ``with nanlab.watch(model): model.fit(...)`` form (no callback events
reach it on JAX), ``LossScaleOptimizer`` (``mixed_float16``: it skips overflowing steps itself),
``steps_per_execution > 1`` (several steps per compiled call). Keras has no callback for an exception inside ``fit``:
one the watch did not raise itself (a ``KeyboardInterrupt``) leaves the gate on ``model.optimizer`` until the next
``on_train_end``.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np

from nanlab.errors import NanlabError, NonFiniteError
from nanlab.frameworks.tensorflow.hosts import on_jax_backend
from nanlab.report import NonFiniteReport, spoiled_by_update
from nanlab.watching import WatchPolicy
from nanlab.watching.core import WatchCore, WatchSurface
from nanlab.watching.vocabulary import Phase, dtype_max

INSTALL_HINT = "pip install 'nanlab[integrations]'"
try:
    import jax
except ModuleNotFoundError as missing:  # only JAX itself missing is the one-line message
    if (missing.name or "").split(".")[0] not in ("jax", "jaxlib"):
        raise
    raise NanlabError(f"JAX is not installed; install it with: {INSTALL_HINT}") from None

# already imported (nanlab.watch was given a Keras model); after jax, whose absence is the message above
import keras  # noqa: E402

__all__ = ["FiniteGate", "KerasJaxWatch", "watch"]
LOG = logging.getLogger("nanlab.watch")
OPTIONS: tuple[str, ...] = ()
# The Keras notebooks (notebooks/tensorflow/) teach each cause in Keras code, which runs on any backend.
REPORT_FRAMEWORK = "tensorflow"
NOT_LOCALISED = ("Keras on the JAX backend: the layer, the op and the samples were not localised, because fit runs "
                 "each step as one compiled JAX function whose batch and intermediate values never reach a "
                 "callback, so the watch saw only the step's loss and its gradients' finiteness and had nothing to "
                 "replay. To localise it, run the same script with KERAS_BACKEND=torch, where nanlab.watch replays "
                 "the step and names the layer, op and samples.")


class FiniteGate(keras.optimizers.Optimizer):
    """Wraps a Keras optimizer, as ``LossScaleOptimizer`` does, and applies its update only when the step's loss
    and every gradient are finite (``keras.ops.cond`` inside the compiled step). ``on_loss(loss)`` and
    ``on_gradients(finite_per_gradient, global_norm)`` receive each step's values on the host."""

    def __init__(self, inner_optimizer, on_loss: Callable, on_gradients: Callable):
        super().__init__(learning_rate=0.0, name=f"nanlab_gate_{inner_optimizer.name}")
        self.inner_optimizer = inner_optimizer
        self._on_loss, self._on_gradients = on_loss, on_gradients

    def build(self, var_list):
        if not self.inner_optimizer.built:
            self.inner_optimizer.build(var_list)
        super().build(var_list)

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    def scale_loss(self, loss):
        jax.debug.callback(self._on_loss, loss)
        poison = keras.ops.stop_gradient(keras.ops.where(keras.ops.isfinite(loss), 1.0, math.nan))
        return self.inner_optimizer.scale_loss(loss * poison)

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        own = len(self._variables)
        present = [g for g in grads if g is not None]
        finite_each = keras.ops.stack([keras.ops.all(keras.ops.isfinite(g)) for g in present])
        norm = keras.ops.sqrt(sum(keras.ops.sum(keras.ops.square(keras.ops.cast(g, "float32"))) for g in present))
        jax.debug.callback(self._on_gradients, finite_each, norm)

        def apply():
            trainable, inner = self.inner_optimizer.stateless_apply(list(optimizer_variables[own:]), grads,
                                                                     trainable_variables)
            return list(trainable), list(optimizer_variables[:own]) + list(inner)

        def keep():
            return list(trainable_variables), list(optimizer_variables)

        return keras.ops.cond(keras.ops.all(finite_each), apply, keep)

    def apply(self, grads, trainable_variables=None):
        raise NanlabError("nanlab's FiniteGate runs inside Keras' JAX fit (stateless_apply) only")

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)


class KerasJaxWatch(WatchSurface, keras.callbacks.Callback):
    """``model.fit(..., callbacks=[nanlab.watch(model)])`` for Keras 3 on the JAX backend (see the module
    docstring). Attributes, the same as every watch's: ``step``, ``history``, ``report``, ``stopped``, ``policy``."""

    def __init__(self, model, policy: WatchPolicy):
        super().__init__()
        if not on_jax_backend(model):
            raise NanlabError(f"{type(model).__name__} is not a Keras model on the JAX backend")
        self.watched = model
        self.core = WatchCore(policy)
        self._own_optimizer = None  # the model's optimizer while the gate stands in for it
        self._names: list[str] = []
        self._warned_unseen = False
        self._clear_step()

    def __enter__(self):
        raise NanlabError("on Keras' JAX backend pass the watch to fit: model.fit(..., "
                          "callbacks=[nanlab.watch(model)]) (the with form gets no callback events there)")

    def __exit__(self, kind, error, traceback) -> None:
        self._detach()

    # -- attaching: fit's on_train_begin / on_train_end ---------------------------------------------------------
    def on_train_begin(self, logs=None) -> None:
        model = self.watched
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            raise NanlabError("nanlab.watch(model) on the JAX backend needs a compiled model "
                              "(model.compile(optimizer=..., loss=...)) before fit")
        if isinstance(optimizer, FiniteGate):
            raise NanlabError("this model's optimizer is already watched: pass one nanlab.watch(model) to fit")
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            raise NanlabError("nanlab.watch does not yet support Keras' LossScaleOptimizer (mixed_float16) on the "
                              "JAX backend: it skips overflowing steps itself; mixed_bfloat16 works")
        if getattr(model, "steps_per_execution", 1) != 1:
            raise NanlabError(f"nanlab.watch needs steps_per_execution=1 on the JAX backend (got "
                              f"{model.steps_per_execution}): it decides after each step")
        prefix = f"{model.name}/"
        self._names = [v.path[len(prefix):] if v.path.startswith(prefix) else v.path
                       for v in model.trainable_variables]
        gate = FiniteGate(optimizer, self._seen_loss, self._seen_gradients)
        if optimizer.built:
            gate.build(model.trainable_variables)
        self._own_optimizer = optimizer
        model.optimizer = gate
        model.make_train_function(force=True)  # traced afresh, through the gate

    def on_train_end(self, logs=None) -> None:
        if self._own_optimizer is None:
            return
        self._detach()
        if self.core.step and not self.stopped:  # a weight the last update made non-finite shows in no later step
            bad = self._nonfinite_weights()
            if bad:
                self.core.fault_at_end(lambda: self._update_report(bad, self.core.step))

    def _detach(self) -> None:
        """Give the model its own optimizer back, with the state ``fit`` holds written to the variables first (the
        gate's variable list is not the optimizer's)."""
        if self._own_optimizer is None:
            return
        model = self.watched
        model.jax_state_sync()
        model.optimizer, self._own_optimizer = self._own_optimizer, None
        model.make_train_function(force=True)

    # -- what each step hands over (from inside the compiled step) ---------------------------------------------
    def _clear_step(self) -> None:
        self._loss: float | None = None
        self._finite_each: np.ndarray | None = None
        self._norm: float | None = None

    def _seen_loss(self, loss) -> None:
        self._loss = float(loss)

    def _seen_gradients(self, finite_each, norm) -> None:
        self._finite_each, self._norm = np.asarray(finite_each, bool), float(norm)

    def on_train_batch_begin(self, batch, logs=None) -> None:
        self._clear_step()

    # -- the check, after the step (its update was gated inside it) ---------------------------------------------
    def on_train_batch_end(self, batch, logs=None) -> None:
        if self._own_optimizer is None:
            return
        jax.effects_barrier()  # the step's callbacks have run
        loss, finite_each, norm = self._loss, self._finite_each, self._norm
        if finite_each is None:
            if not self._warned_unseen:
                self._warned_unseen = True
                LOG.warning("nanlab.watch: the step did not go through model.optimizer.stateless_apply (a custom "
                            "train_step?): it is not checked")
            return
        if (loss is None or math.isfinite(loss)) and finite_each.all():
            self.core.healthy(loss, norm)
            return
        try:
            self.core.fault(lambda: self._step_report(loss, finite_each), drop_update=lambda: None)
        except BaseException as error:
            if isinstance(error, NonFiniteError):
                self._detach()  # fit's on_train_end will not run
            raise
        if self.stopped:
            self.watched.stop_training = True

    def _step_report(self, loss: float | None, finite_each: np.ndarray) -> NonFiniteReport:
        """What the watch knows of a bad step: its loss and which gradients went non-finite, or the weight an
        earlier update left non-finite. Layer, op and samples stay unknown (``NOT_LOCALISED``)."""
        bad_weights = self._nonfinite_weights()
        if bad_weights:
            return self._update_report(bad_weights, self.core.step)
        loss_bad = loss is not None and not math.isfinite(loss)
        report = self._base_report(self.core.step, Phase.LOSS if loss_bad else Phase.BACKWARD)
        bad_gradients = [name for name, finite in zip(self._names, finite_each) if not finite]
        if loss_bad:
            report.value = repr(loss)
            report.note = f"Its update was not applied. {NOT_LOCALISED}"
        else:
            # Named by place (nearest the output, last in the model's order), not by the order JAX computed them.
            report.parameter = bad_gradients[-1] if bad_gradients else None
            report.note = (f"Non-finite gradients: {', '.join(bad_gradients)}; the update was not applied. "
                           f"{NOT_LOCALISED}")
        spoiled_state = self._nonfinite_state()
        if spoiled_state:
            report.note += (f" This step's forward pass left non-trainable state non-finite "
                            f"({', '.join(spoiled_state)}), which the watch does not undo.")
        return report

    def _update_report(self, bad: list[str], found_at: int) -> NonFiniteReport:
        report = self._base_report(max(found_at - 1, 0), Phase.OPTIMIZER)
        report.parameter = bad[0]
        variable = self.watched.trainable_variables[self._names.index(bad[0])]
        report.dtype = keras.backend.standardize_dtype(variable.dtype)
        report.dtype_max = dtype_max(report.dtype)
        report.note = f"{spoiled_by_update(found_at, bad[0])} {NOT_LOCALISED}"
        return report

    def _base_report(self, step: int, phase: Phase) -> NonFiniteReport:
        history = self.core.history
        return NonFiniteReport(REPORT_FRAMEWORK, step, phase, losses=list(history.losses),
                               grad_norms=list(history.grad_norms))

    def _nonfinite_state(self) -> list[str]:
        """The floating non-trainable variables holding a non-finite value (read at a bad step only)."""
        model = self.watched
        prefix = f"{model.name}/"
        return [v.path[len(prefix):] if v.path.startswith(prefix) else v.path for v in model.non_trainable_variables
                if keras.backend.is_float_dtype(v.dtype) and not np.isfinite(keras.ops.convert_to_numpy(v.value)).all()]

    def _nonfinite_weights(self) -> list[str]:
        """The trainable weights holding a non-finite value (one host read of each; a bad step or fit's end only)."""
        model = self.watched
        model.jax_state_sync()  # fit keeps the weights in its own state mid-epoch; this writes them back
        return [name for name, v in zip(self._names, model.trainable_variables)
                if not np.isfinite(keras.ops.convert_to_numpy(v.value)).all()]


def watch(model, optimizer=None, loss_fn=None, *, policy: WatchPolicy, **options):
    """``nanlab.watch`` for a Keras model on the JAX backend: the Keras callback for ``fit``."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise NanlabError(f"unknown nanlab.watch option {unknown[0]!r} for Keras on the JAX backend")
    if optimizer is not None or loss_fn is not None:
        raise NanlabError("for Keras' fit on the JAX backend pass the model alone: "
                          "model.fit(..., callbacks=[nanlab.watch(model)]); a hand-written JAX loop is not watched")
    return KerasJaxWatch(model, policy)
