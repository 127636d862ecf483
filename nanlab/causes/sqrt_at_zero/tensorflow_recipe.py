"""Square root at zero in TensorFlow/Keras: std pooling over time written as sqrt(var), and its fixes."""
from nanlab.causes.sqrt_at_zero import (BATCH_SIZE, EPS, HIDDEN_UNITS, LR, NUM_CLASSES, NUM_FEATURES,
                                        SEQUENCE_LENGTH, make_data)
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, minibatches, tf


def variance_over_time(h: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.square(h - tf.reduce_mean(h, axis=1, keepdims=True)), axis=1)


def hand_written_std(h: tf.Tensor) -> tf.Tensor:
    return tf.sqrt(variance_over_time(h))  # finite at 0; its gradient there is inf * 0 = nan


def eps_under_root_std(h: tf.Tensor) -> tf.Tensor:
    return tf.sqrt(variance_over_time(h) + EPS)


def safe_sqrt_std(h: tf.Tensor) -> tf.Tensor:
    var = variance_over_time(h)
    positive = var > 0
    return tf.where(positive, tf.sqrt(tf.where(positive, var, 1.0)), 0.0)  # no sqrt ever sees a 0


class StdPooling(keras.layers.Layer):
    """The standard deviation over time of every unit, computed with the given function."""

    def __init__(self, std, **kwargs):
        super().__init__(**kwargs)
        self.std = std

    def call(self, h):
        return self.std(h)


def make_model(std) -> keras.Model:
    """Each time step through a dense layer, then the standard deviation over time of every unit, then a head."""
    return keras.Sequential([
        keras.Input((SEQUENCE_LENGTH, NUM_FEATURES)),
        keras.layers.Dense(HIDDEN_UNITS),
        StdPooling(std, name="std_pooling"),
        keras.layers.Dense(NUM_CLASSES),
    ])


def build_training(seed: int, std) -> Training:
    data = make_data(seed)
    return Training(
        model=make_model(std),
        optimizer=keras.optimizers.Adam(learning_rate=LR),
        loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed),
        evaluate=accuracy(data.x_eval, data.y_eval),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, hand_written_std)


def eps_under_root(seed: int, device: str) -> Training:
    return build_training(seed, eps_under_root_std)


def safe_sqrt(seed: int, device: str) -> Training:
    return build_training(seed, safe_sqrt_std)


SETTINGS = {"broken": broken, "eps-under-root": eps_under_root, "safe-sqrt": safe_sqrt}
