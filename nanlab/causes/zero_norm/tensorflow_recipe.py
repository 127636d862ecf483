"""Zero norm in TensorFlow/Keras: an L2-normalised embedding of rows that can be all zero, and its fixes."""
from nanlab.causes.zero_norm import (BATCH_SIZE, EMBEDDING_UNITS, EPS, LR, NUM_CLASSES, NUM_FEATURES, make_data)
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, minibatches, tf


def hand_written_normalize(x: tf.Tensor) -> tf.Tensor:
    return x * tf.math.rsqrt(tf.reduce_sum(x * x, axis=-1, keepdims=True))  # all-zero row: 0 * inf = nan


def eps_denominator_normalize(x: tf.Tensor) -> tf.Tensor:
    return x / (tf.norm(x, axis=-1, keepdims=True) + EPS)


def framework_normalize(x: tf.Tensor) -> tf.Tensor:
    return tf.math.l2_normalize(x, axis=-1)  # x * rsqrt(max(sum(x**2), 1e-12))


class Normalization(keras.layers.Layer):
    """Scales each row to unit length with the given function (a layer, so that the watch can name it)."""

    def __init__(self, normalize, **kwargs):
        super().__init__(**kwargs)
        self.normalize = normalize

    def call(self, x):
        return self.normalize(x)


def make_model(normalize) -> keras.Model:
    """A bias-free embedding scaled to unit length (a cosine classifier's body), then a linear head."""
    return keras.Sequential([
        keras.Input((NUM_FEATURES,)),
        keras.layers.Dense(EMBEDDING_UNITS, use_bias=False),  # an all-zero row stays all zero
        Normalization(normalize, name="normalize"),
        keras.layers.Dense(NUM_CLASSES),
    ])


def build_training(seed: int, normalize) -> Training:
    data = make_data(seed)
    return Training(
        model=make_model(normalize),
        optimizer=keras.optimizers.Adam(learning_rate=LR),
        loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed),
        evaluate=accuracy(data.x_eval, data.y_eval),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, hand_written_normalize)


def eps_denominator(seed: int, device: str) -> Training:
    return build_training(seed, eps_denominator_normalize)


def normalize(seed: int, device: str) -> Training:
    return build_training(seed, framework_normalize)


SETTINGS = {"broken": broken, "eps-denominator": eps_denominator, "framework-normalize": normalize}
