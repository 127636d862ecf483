"""Huge labels in TensorFlow/Keras: the broken setting, its fixes, and the regression cousin (targets ~1e10)."""
import numpy as np

from nanlab.causes.huge_labels import (BATCH_SIZE, HIDDEN_UNITS, LR, NUM_CLASSES, NUM_FEATURES, REGRESSION_LR,
                                       drop_bad_labels, make_data, make_regression_data, r_squared, remap_labels)
from nanlab.data import Dataset
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, minibatches, tf

# CPU: "Received a label value of 8000 which is outside the valid range of [0, 5)". On GPU TensorFlow does not
# check: the loss and gradient rows of that sample are NaN (per the TF docs), and the loop records non-finite.
EXPECTED_ERRORS = (tf.errors.InvalidArgumentError,)


def make_model(num_inputs: int, num_outputs: int) -> keras.Model:
    return keras.Sequential([
        keras.Input((num_inputs,)),
        keras.layers.Dense(HIDDEN_UNITS, activation="relu"),
        keras.layers.Dense(HIDDEN_UNITS, activation="relu"),
        keras.layers.Dense(num_outputs),
    ])


def build_training(data: Dataset, num_classes: int, seed: int) -> Training:
    return Training(
        model=make_model(NUM_FEATURES, num_classes),
        optimizer=keras.optimizers.SGD(learning_rate=LR),
        loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed),
        evaluate=accuracy(data.x_eval, data.y_eval),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(make_data(seed), NUM_CLASSES, seed)  # one training label is 8000


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


def regression_training(data: Dataset, seed: int, mean: float = 0.0, std: float = 1.0) -> Training:
    return Training(
        model=make_model(data.x_train.shape[1], 1),
        optimizer=keras.optimizers.SGD(learning_rate=REGRESSION_LR),
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


REGRESSION_SETTINGS = {"broken": regression_broken, "standardise-targets": regression_standardised}
