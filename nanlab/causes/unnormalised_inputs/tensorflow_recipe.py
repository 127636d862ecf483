"""Unnormalised inputs in TensorFlow/Keras: an MSE regressor on raw 0-255 pixels with SGD, its fixes and the
low-rate patch."""
from typing import Callable

import numpy as np

from nanlab.causes.unnormalised_inputs import (BATCH_SIZE, LOW_LR, LR, NUM_FEATURES, make_data,
                                               scale_to_unit, standardise)
from nanlab.data import Dataset, r_squared
from nanlab.frameworks.tensorflow.loop import Training, keras, minibatches, tf


def make_model(normalisation: keras.layers.Layer | None = None) -> keras.Model:
    layers = [keras.Input((NUM_FEATURES,))]
    if normalisation is not None:
        layers.append(normalisation)
    layers.append(keras.layers.Dense(1))  # linear regression: the loss is an exact quadratic in the weights
    return keras.Sequential(layers)


def held_out_r_squared(x: np.ndarray, y: np.ndarray) -> Callable[[keras.Model], float]:
    features = tf.constant(x)

    def evaluate(model: keras.Model) -> float:
        return r_squared(model(features, training=False).numpy(), y)

    return evaluate


def build_training(data: Dataset, seed: int, lr: float = LR,
                   normalisation: keras.layers.Layer | None = None) -> Training:
    return Training(
        model=make_model(normalisation),
        optimizer=keras.optimizers.SGD(learning_rate=lr),
        loss_fn=keras.losses.MeanSquaredError(),
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed),
        evaluate=held_out_r_squared(data.x_eval, data.y_eval),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(make_data(seed), seed)


def scale(seed: int, device: str) -> Training:
    return build_training(scale_to_unit(make_data(seed)), seed)


def standardised(seed: int, device: str) -> Training:
    return build_training(standardise(make_data(seed)), seed)


def normalisation_layer(seed: int, device: str) -> Training:
    data = make_data(seed)
    normalisation = keras.layers.Normalization()
    normalisation.adapt(data.x_train)  # the training set's mean and variance, fixed inside the model
    return build_training(data, seed, normalisation=normalisation)


def lower_lr(seed: int, device: str) -> Training:
    return build_training(make_data(seed), seed, lr=LOW_LR)


SETTINGS = {"broken": broken, "scale-to-unit": scale, "standardise": standardised,
            "input-normalisation-layer": normalisation_layer, "lower-lr": lower_lr}
