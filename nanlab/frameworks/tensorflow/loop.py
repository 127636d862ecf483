"""The TensorFlow/Keras training loop that records loss, gradient norm and the first non-finite step.

A ``GradientTape`` loop. The forward and backward passes run eagerly, so that an op that raises (out-of-range labels
on CPU) raises where it is written; only the optimizer update is a ``tf.function``, traced once per run, because
Keras' eager update costs several milliseconds per step (measured 2.4x faster Adam runs, identical losses).
Recording does not change the numerics: the gradient norm is computed from the gradients (in float64) without
touching them; clipping and schedules, when a fix asks for them, are the optimizer's own
(``global_clipnorm``, ``keras.optimizers.schedules``), as a Keras user would write them.
"""
from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from nanlab.data import minibatch_indices
# keras, on_device and tf are re-exported for recipes and notebooks
from nanlab.frameworks.tensorflow.backend import keras, on_device, tf  # noqa: F401
from nanlab.lr_range import RangeTestTracker
from nanlab.run import History
from nanlab.training import Training as BaseTraining

Batch = tuple[tf.Tensor, tf.Tensor]


@dataclass
class Training(BaseTraining):
    """A Keras training run: ``loss_fn(y_true, y_pred)``; clipping and schedules are the optimizer's own."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    loss_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
    batches: Iterator[Batch]
    evaluate: Callable[[keras.Model], float]
    compiled_update: Callable[[list[tf.Tensor]], None] | None = field(default=None, init=False, repr=False)

    def apply_update(self, gradients: list[tf.Tensor]) -> None:
        """``optimizer.apply(gradients, variables)`` as a ``tf.function``, traced on first use."""
        if self.compiled_update is None:
            variables = self.model.trainable_variables
            if not self.optimizer.built:
                self.optimizer.build(variables)  # optimizer slots must exist before tracing
            self.compiled_update = tf.function(lambda grads: self.optimizer.apply(grads, variables))
        self.compiled_update(gradients)



def minibatches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> Iterator[Batch]:
    """Endless shuffled minibatches of ``(x, y)`` as tensors."""
    features, targets = tf.constant(x), tf.constant(y)
    for index in minibatch_indices(len(x), batch_size, seed):
        yield tf.gather(features, index), tf.gather(targets, index)


def accuracy(x: np.ndarray, y: np.ndarray) -> Callable[[keras.Model], float]:
    """An ``evaluate`` function: the model's accuracy on held-out ``(x, y)``."""
    features = tf.constant(x)

    def evaluate(model: keras.Model) -> float:
        predictions = np.argmax(model(features, training=False).numpy(), axis=-1)
        return float(np.mean(predictions == y))

    return evaluate


class CompiledForward(keras.Model):
    """Runs the wrapped model's forward pass as one ``tf.function``, as ``model.fit`` would.

    The loop keeps the forward pass eager (see the module docstring), and eagerly Keras runs a model op by op: a
    recurrent layer one time step after another (about 0.25 s per training step for exploding-rnn-gradients' GRU,
    0.03 s compiled), a 20-layer MLP at tens of milliseconds a step. The loop's ``GradientTape`` still
    differentiates through it, and the watch's replay still runs the inner model eagerly, layer by layer.
    """

    def __init__(self, inner: keras.Model):
        super().__init__(name=f"compiled_{inner.name}")
        self.inner = inner
        self.forward = tf.function(inner, reduce_retracing=True)

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.forward(x, training=training)


def gradient_norm(gradients: list[tf.Tensor | None]) -> tf.Tensor:
    """The global L2 norm of the gradients, accumulated in float64; the gradients are not modified."""
    squares = [tf.reduce_sum(tf.square(tf.cast(g, tf.float64))) for g in gradients if g is not None]
    return tf.sqrt(tf.add_n(squares)) if squares else tf.constant(0.0, tf.float64)


# gradient_norm as one graph, for the loop's every step: eagerly it is three ops per variable, each dispatched from
# Python (about 3 ms a step for a 42-variable model); traced once per model it gives the same float64 norm to within
# its rounding (measured over every TF cause: equal, or at most 2.2e-16 apart relative). Training never reads it.
compiled_gradient_norm = tf.function(gradient_norm, reduce_retracing=True)


def train_step(training: Training, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """One optimisation step; returns the loss and the global gradient norm (before the optimizer clips)."""
    model = training.model
    with tf.GradientTape() as tape:
        loss = training.loss_fn(y, model(x, training=True))
    gradients = tape.gradient(loss, model.trainable_variables)
    norm = compiled_gradient_norm(gradients)  # gradient_norm skips a variable without a gradient (None)
    training.apply_update(gradients)
    return loss, norm


def train(training: Training, steps: int, history: History | None = None) -> History:
    """Train for ``steps`` steps, stopping at the first step whose loss or gradient norm is non-finite. Steps are
    recorded into ``history`` when given, so that a caller keeps the steps before an exception. Under
    ``nanlab.watch(training, on_nonfinite="skip")`` a step whose update the watch dropped is not recorded and training
    goes on."""
    history = history if history is not None else History()
    for _ in range(steps):
        try:
            x, y = next(training.batches)
        except StopIteration:  # a watch that stopped training (on_nonfinite="stop") ends its batches
            break
        loss, norm = (float(value.numpy()) for value in train_step(training, x, y))
        if training.watch_decides(math.isfinite(loss) and math.isfinite(norm)):
            continue  # the watch decides as the next batch is drawn: it raises, or the update was held back
        if not history.record(loss, norm):
            break
    return history


def lr_range_test(training: Training, lr_min: float = 1e-4, lr_max: float = 100.0, steps: int = 60) -> float:
    """Leslie Smith's LR range test (see ``nanlab.lr_range``); the model and the optimizer are restored afterwards.

    The optimizer must have a plain float learning rate, not a schedule. Only ``training.batches`` is consumed.
    """
    model, optimizer = training.model, training.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    weights = model.get_weights()
    optimizer_state = [variable.numpy() for variable in optimizer.variables]
    tracker = RangeTestTracker(lr_min, lr_max, steps)
    for lr in tracker.rates():
        optimizer.learning_rate.assign(lr)
        x, y = next(training.batches)
        if not tracker.record(float(train_step(training, x, y)[0].numpy())):
            break
    model.set_weights(weights)
    for variable, value in zip(optimizer.variables, optimizer_state):
        variable.assign(value)
    return tracker.suggestion()
