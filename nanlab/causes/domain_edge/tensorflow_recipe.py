"""Domain edge in TensorFlow/Keras: an ArcFace head on 2-D features, its acos at the edge of its domain, and the
fixes."""
import math

from nanlab.causes.domain_edge import (BATCH_SIZE, BELOW_THRESHOLD, EMBEDDING_DIM, EPS, HIDDEN_UNITS, LR, MARGIN,
                                       NUM_CLASSES, NUM_FEATURES, SCALE, THRESHOLD, class_directions, make_data)
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, minibatches, tf


def hand_written_margin(cosine: tf.Tensor) -> tf.Tensor:
    return tf.cos(tf.math.acos(cosine) + MARGIN)  # acos(1.0000001) = nan; at exactly +-1 its gradient is -inf


def clamp_eps_margin(cosine: tf.Tensor) -> tf.Tensor:
    return tf.cos(tf.math.acos(tf.clip_by_value(cosine, -1 + EPS, 1 - EPS)) + MARGIN)


def no_acos_margin(cosine: tf.Tensor) -> tf.Tensor:
    sine = tf.sqrt(tf.maximum(1 - cosine * cosine, EPS))  # sin(theta) >= 0 for theta in [0, pi]
    return cosine * math.cos(MARGIN) - sine * math.sin(MARGIN)


def clamp_unit_margin(cosine: tf.Tensor) -> tf.Tensor:
    return tf.cos(tf.math.acos(tf.clip_by_value(cosine, -1.0, 1.0)) + MARGIN)  # finite forward, -inf gradient at +-1


class CosineHead(keras.layers.Layer):
    """The cosine between the unit embedding and each unit class weight (the class weights are this layer's)."""

    def build(self, input_shape):
        self.class_weights = self.add_weight(shape=(NUM_CLASSES, input_shape[-1]), name="class_weights",
                                             initializer=keras.initializers.Constant(class_directions()))

    def call(self, embedding):
        return tf.matmul(tf.math.l2_normalize(embedding, axis=-1), tf.math.l2_normalize(self.class_weights, axis=-1),
                         transpose_b=True)


def make_model() -> keras.Model:
    """An MLP to a 2-D embedding, then the cosine head."""
    return keras.Sequential([
        keras.Input((NUM_FEATURES,)),
        keras.layers.Dense(HIDDEN_UNITS, activation="relu"),
        keras.layers.Dense(EMBEDDING_DIM, name="embedding"),
        CosineHead(name="cosine"),
    ])


def arcface_loss(margin):
    """Cross-entropy of s * cos(theta + m) for the target class and s * cos(theta) for the others (ArcFace)."""

    def loss_fn(target: tf.Tensor, cosine: tf.Tensor) -> tf.Tensor:
        with_margin = tf.where(cosine > THRESHOLD, margin(cosine), cosine - BELOW_THRESHOLD)
        is_target = tf.one_hot(target, NUM_CLASSES) > 0
        logits = SCALE * tf.where(is_target, with_margin, cosine)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(target, logits))

    return loss_fn


def build_training(seed: int, margin) -> Training:
    data = make_data(seed)
    return Training(
        model=make_model(),
        optimizer=keras.optimizers.Adam(learning_rate=LR),
        loss_fn=arcface_loss(margin),
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed),
        evaluate=accuracy(data.x_eval, data.y_eval),  # the class whose weight is nearest in angle
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, hand_written_margin)


def clamp_eps(seed: int, device: str) -> Training:
    return build_training(seed, clamp_eps_margin)


def no_acos(seed: int, device: str) -> Training:
    return build_training(seed, no_acos_margin)


def clamp_unit(seed: int, device: str) -> Training:
    return build_training(seed, clamp_unit_margin)


SETTINGS = {"broken": broken, "clamp-eps": clamp_eps, "no-acos": no_acos, "clamp-unit": clamp_unit}
