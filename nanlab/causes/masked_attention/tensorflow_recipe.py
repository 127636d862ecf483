"""Masked attention in TensorFlow/Keras: attention pooling with a padding mask of -inf, its fixes and the
NaN-to-zero patch."""
import math

from nanlab.causes.masked_attention import (BATCH_SIZE, KEY_UNITS, LR, MASK_VALUE, MAX_LENGTH, NUM_CLASSES,
                                            NUM_FEATURES, make_data)
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, minibatches, tf


def mask_bias(valid: tf.Tensor, masked_value: float = -math.inf) -> tf.Tensor:
    """The additive attention mask: 0 for valid keys, ``masked_value`` for the others."""
    return tf.where(valid, 0.0, masked_value)


def masked_softmax(scores: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    return tf.nn.softmax(scores + mask_bias(valid))  # no valid key: all -inf, nan weights


def finite_mask_softmax(scores: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    return tf.nn.softmax(scores + mask_bias(valid, MASK_VALUE))


def guarded_softmax(scores: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    has_key = tf.reduce_any(valid, axis=-1, keepdims=True)
    weights = tf.nn.softmax(scores + mask_bias(valid | ~has_key))  # rows with no valid key: unmasked
    return weights * tf.cast(has_key, weights.dtype)  # ... and weighted by 0


def nan_to_num_softmax(scores: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    weights = masked_softmax(scores, valid)
    return tf.where(tf.math.is_nan(weights), 0.0, weights)


class AttentionPooling(keras.layers.Layer):
    """A learned query attends over the valid tokens; returns the weighted sum of their values."""

    def __init__(self, softmax, **kwargs):
        super().__init__(**kwargs)
        self.softmax = softmax
        self.keys = keras.layers.Dense(KEY_UNITS)
        self.values = keras.layers.Dense(KEY_UNITS)

    def build(self, input_shape):
        self.query = self.add_weight(shape=(KEY_UNITS,), initializer="random_normal", name="query")

    def call(self, x):
        tokens, valid = x[..., :NUM_FEATURES], x[..., NUM_FEATURES] > 0
        scores = tf.linalg.matvec(self.keys(tokens), self.query) / math.sqrt(KEY_UNITS)
        weights = self.softmax(scores, valid)
        return tf.reduce_sum(weights[..., None] * self.values(tokens), axis=1)


def make_model(softmax) -> keras.Model:
    return keras.Sequential([
        keras.Input((MAX_LENGTH, NUM_FEATURES + 1)),
        AttentionPooling(softmax, name="attention"),
        keras.layers.Dense(NUM_CLASSES),
    ])


def build_training(seed: int, softmax) -> Training:
    data = make_data(seed)
    return Training(
        model=make_model(softmax),
        optimizer=keras.optimizers.Adam(learning_rate=LR),
        loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed),
        evaluate=accuracy(data.x_eval, data.y_eval),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, masked_softmax)


def finite_mask(seed: int, device: str) -> Training:
    return build_training(seed, finite_mask_softmax)


def guard_empty_rows(seed: int, device: str) -> Training:
    return build_training(seed, guarded_softmax)


def nan_to_num(seed: int, device: str) -> Training:
    return build_training(seed, nan_to_num_softmax)


SETTINGS = {"broken": broken, "finite-mask": finite_mask, "guard-empty-rows": guard_empty_rows,
            "nan-to-num": nan_to_num}
