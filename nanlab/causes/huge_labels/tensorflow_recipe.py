"""Huge labels in TensorFlow/Keras: the broken setting, its fixes, and the regression cousin (targets ~1e10)."""
import numpy as np

from nanlab.causes.huge_labels import (ADAM_LR, BATCH_SIZE, HIDDEN_UNITS, LR, NUM_CLASSES, NUM_FEATURES,
                                       REGRESSION_LR, drop_bad_labels, make_data, make_regression_data, remap_labels)
from nanlab.data import Dataset, r_squared
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, minibatches, tf

# CPU: "Received a label value of 8000 which is outside the valid range of [0, 5)". On GPU TensorFlow does not
# check: the loss and gradient rows of that sample are NaN (per the TF docs), and the loop records non-finite.
# XLA does not check either, so ``broken_under_xla`` shows the GPU behaviour on a CPU.
EXPECTED_ERRORS = (tf.errors.InvalidArgumentError,)


def make_model(num_inputs: int, num_outputs: int) -> keras.Model:
    return keras.Sequential([
        keras.Input((num_inputs,)),
        keras.layers.Dense(HIDDEN_UNITS, activation="relu", name="hidden1"),
        keras.layers.Dense(HIDDEN_UNITS, activation="relu", name="hidden2"),
        keras.layers.Dense(num_outputs, name="output"),
    ], name="mlp")


def build_training(data: Dataset, num_classes: int, seed: int, loss_fn=None) -> Training:
    return Training(
        model=make_model(NUM_FEATURES, num_classes),
        optimizer=keras.optimizers.SGD(learning_rate=LR),
        loss_fn=loss_fn or keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed),
        evaluate=accuracy(data.x_eval, data.y_eval),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(make_data(seed), NUM_CLASSES, seed)  # one training label is 8000


def broken_under_xla(seed: int, device: str) -> Training:
    """The broken setting with the loss compiled by XLA, which skips the label check as a GPU does: NaN, no error."""
    loss_fn = tf.function(keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    return build_training(make_data(seed), NUM_CLASSES, seed, loss_fn=loss_fn)


def drop_bad(seed: int, device: str) -> Training:
    return build_training(drop_bad_labels(make_data(seed), NUM_CLASSES), NUM_CLASSES, seed)


def remap(seed: int, device: str) -> Training:
    data, classes = remap_labels(make_data(seed))  # classes == [0, 1, 2, 3, 4, 8000]
    return build_training(data, len(classes), seed)


SETTINGS = {"broken": broken, "drop-bad-labels": drop_bad, "remap-labels": remap}


def r_squared_of(x: np.ndarray, y: np.ndarray, mean: float = 0.0, std: float = 1.0):
    """An ``evaluate`` function: R² of the model's predictions, un-standardised by ``mean``/``std``, against ``y``."""
    features = tf.constant(x)

    def evaluate(model: keras.Model) -> float:
        return r_squared(model(features, training=False).numpy() * std + mean, y)

    return evaluate


def regression_training(data: Dataset, seed: int, mean: float = 0.0, std: float = 1.0,
                        adam: bool = False) -> Training:
    optimizer = (keras.optimizers.Adam(learning_rate=ADAM_LR) if adam
                 else keras.optimizers.SGD(learning_rate=REGRESSION_LR))
    return Training(
        model=make_model(data.x_train.shape[1], 1),
        optimizer=optimizer,
        loss_fn=keras.losses.MeanSquaredError(),
        batches=minibatches(data.x_train, (data.y_train - mean) / std, BATCH_SIZE, seed),
        evaluate=r_squared_of(data.x_eval, data.y_eval, mean, std),
    )


def regression_broken(seed: int, device: str) -> Training:
    return regression_training(make_regression_data(seed), seed)  # targets ~1e10, trained as they are


def regression_standardised(seed: int, device: str) -> Training:
    data = make_regression_data(seed)
    mean, std = float(data.y_train.mean()), float(data.y_train.std())  # training-set statistics only
    return regression_training(data, seed, mean, std)  # predictions * std + mean in evaluate


def regression_adam(seed: int, device: str) -> Training:
    # Adam moves each weight by about lr per step whatever the gradient's size: no overflow, and no way to 1e10
    return regression_training(make_regression_data(seed), seed, adam=True)


REGRESSION_SETTINGS = {"broken": regression_broken, "standardise-targets": regression_standardised,
                       "adam": regression_adam}
