"""Symmetric labels in TensorFlow/Keras: the broken setting, the fix, and the hand-written gather that hides it."""
import numpy as np

from nanlab.causes.symmetric_labels import (BATCH_SIZE, HIDDEN_UNITS, LR, NUM_CLASSES, NUM_FEATURES, make_data,
                                            map_labels)
from nanlab.data import Dataset
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, minibatches, tf

# CPU: "Received a label value of -1 which is outside the valid range of [0, 3)". On GPU TensorFlow does not
# check: that sample's loss and gradient rows are NaN (per the TF docs), and the loop records non-finite.
# XLA does not check either, so ``broken_under_xla`` shows the GPU behaviour on a CPU.
EXPECTED_ERRORS = (tf.errors.InvalidArgumentError,)


def make_model(num_outputs: int = NUM_CLASSES) -> keras.Model:
    return keras.Sequential([
        keras.Input((NUM_FEATURES,)),
        keras.layers.Dense(HIDDEN_UNITS, activation="relu", name="hidden"),
        keras.layers.Dense(num_outputs, name="output"),
    ], name="mlp")


def build_training(data: Dataset, seed: int, loss_fn=None) -> Training:
    return Training(
        model=make_model(),
        optimizer=keras.optimizers.SGD(learning_rate=LR),
        loss_fn=loss_fn or keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed),
        evaluate=accuracy(data.x_eval, data.y_eval),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(make_data(seed), seed)  # labels -1, 0, 1


def broken_under_xla(seed: int, device: str) -> Training:
    """The broken setting with the loss compiled by XLA, which skips the label check as a GPU does: NaN, no error."""
    loss_fn = tf.function(keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    return build_training(make_data(seed), seed, loss_fn=loss_fn)


def map_to_indices(seed: int, device: str) -> Training:
    data, classes = map_labels(make_data(seed))  # classes == [-1, 0, 1]: classes[prediction] for display
    return build_training(data, seed)


def gathered_cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Cross-entropy written by hand; ``take_along_axis`` follows NumPy, so label -1 picks the last class."""
    log_probs = keras.ops.log_softmax(logits, axis=-1)
    return -keras.ops.mean(keras.ops.take_along_axis(log_probs, labels[:, None], axis=1))


def wrapping_gather(seed: int, device: str) -> Training:
    return build_training(make_data(seed), seed, loss_fn=gathered_cross_entropy)


SETTINGS = {"broken": broken, "map-labels": map_to_indices, "wrapping-gather": wrapping_gather}


def binary_minus_one(seed: int, device: str) -> Training:
    """Binary cross-entropy (from logits) fed targets -1 and 1: the loss is unbounded below for target -1."""
    data = make_data(seed)
    keep_train, keep_eval = data.y_train != 0, data.y_eval != 0
    x_eval, positive = data.x_eval[keep_eval], data.y_eval[keep_eval] > 0
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    return Training(
        model=make_model(num_outputs=1),
        optimizer=keras.optimizers.SGD(learning_rate=LR),
        loss_fn=lambda y, logits: bce(y[:, None], logits),
        batches=minibatches(data.x_train[keep_train], data.y_train[keep_train].astype(np.float32), BATCH_SIZE, seed),
        evaluate=lambda model: float(np.mean((model(x_eval, training=False).numpy()[:, 0] > 0) == positive)),
    )
