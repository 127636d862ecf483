"""Division by zero in TensorFlow/Keras: a class-balanced loss divided by per-class counts, its fixes and the
where() trap."""
from typing import Iterator

import numpy as np

from nanlab.causes.division_by_zero import (BATCH_SIZE, EPS, HIDDEN_UNITS, LR, NUM_CLASSES, NUM_FEATURES,
                                            balanced_batch_indices, make_data)
from nanlab.frameworks.tensorflow.loop import Batch, Training, accuracy, keras, minibatches, tf


def make_model() -> keras.Model:
    return keras.Sequential([
        keras.Input((NUM_FEATURES,)),
        keras.layers.Dense(HIDDEN_UNITS, activation="relu", name="hidden"),
        keras.layers.Dense(NUM_CLASSES, name="logits"),
    ], name="mlp")


def class_sums_and_counts(y: tf.Tensor, logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per class: the summed cross-entropy of its samples in the batch, and how many samples it has (maybe 0)."""
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    one_hot = tf.one_hot(y, NUM_CLASSES)
    return tf.linalg.matvec(one_hot, losses, transpose_a=True), tf.reduce_sum(one_hot, axis=0)


def class_balanced_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    sums, counts = class_sums_and_counts(y, logits)
    return tf.reduce_mean(sums / counts)  # a class absent from the batch: 0 / 0 = nan


def eps_denominator_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    sums, counts = class_sums_and_counts(y, logits)
    return tf.reduce_mean(sums / (counts + EPS))


def guard_count_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    sums, counts = class_sums_and_counts(y, logits)
    return tf.reduce_mean(sums / tf.maximum(counts, 1.0))


def safe_divide_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    sums, counts = class_sums_and_counts(y, logits)
    return tf.reduce_mean(tf.math.divide_no_nan(sums, counts))


def where_guard_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    sums, counts = class_sums_and_counts(y, logits)
    return tf.reduce_mean(tf.where(counts == 0, 0.0, sums / counts))  # finite value, nan gradient


def balanced_minibatches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> Iterator[Batch]:
    """Like ``minibatches``, but every batch holds ``batch_size // NUM_CLASSES`` samples of each class."""
    features, targets = tf.constant(x), tf.constant(y)
    for index in balanced_batch_indices(y, batch_size, seed):
        yield tf.gather(features, index), tf.gather(targets, index)


def build_training(seed: int, loss_fn, batch_size: int = BATCH_SIZE, balanced: bool = False) -> Training:
    data = make_data(seed)
    sampler = balanced_minibatches if balanced else minibatches
    return Training(
        model=make_model(),
        optimizer=keras.optimizers.Adam(learning_rate=LR),
        loss_fn=loss_fn,
        batches=sampler(data.x_train, data.y_train, batch_size, seed),
        evaluate=accuracy(data.x_eval, data.y_eval),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, class_balanced_loss)


def eps_denominator(seed: int, device: str) -> Training:
    return build_training(seed, eps_denominator_loss)


def guard_count(seed: int, device: str) -> Training:
    return build_training(seed, guard_count_loss)


def balanced_batches(seed: int, device: str) -> Training:
    return build_training(seed, class_balanced_loss, balanced=True)  # the same loss; no count is ever 0


def safe_divide(seed: int, device: str) -> Training:
    return build_training(seed, safe_divide_loss)


def where_guard(seed: int, device: str) -> Training:
    return build_training(seed, where_guard_loss)


SETTINGS = {"broken": broken, "eps-denominator": eps_denominator, "guard-count": guard_count,
            "balanced-batches": balanced_batches, "safe-divide": safe_divide, "where-guard": where_guard}
