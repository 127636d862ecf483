"""Softmax overflow in TensorFlow/Keras: a hand-written softmax cross-entropy, its fixes and the logit clip."""
from nanlab.causes.softmax_overflow import (BATCH_SIZE, HIDDEN_UNITS, LOGIT_LIMIT, LR, NUM_CLASSES, NUM_FEATURES,
                                            make_data)
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, minibatches, tf


def make_model() -> keras.Model:
    return keras.Sequential([
        keras.Input((NUM_FEATURES,)),
        keras.layers.Dense(HIDDEN_UNITS, activation="relu"),
        keras.layers.Dense(NUM_CLASSES),
    ])


def hand_written_softmax(logits: tf.Tensor) -> tf.Tensor:
    e = tf.exp(logits)  # a logit above 88.72 gives inf
    return e / tf.reduce_sum(e, axis=-1, keepdims=True)  # inf / inf = nan


def nll(p: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Mean negative log-probability of the label."""
    return -tf.reduce_mean(tf.math.log(tf.gather(p, y, axis=1, batch_dims=1)))


def hand_written_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    return nll(hand_written_softmax(logits), y)


def subtract_max_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    shifted = logits - tf.reduce_max(logits, axis=-1, keepdims=True)  # the largest exponent is exp(0) = 1
    log_p = shifted - tf.math.log(tf.reduce_sum(tf.exp(shifted), axis=-1, keepdims=True))  # sum >= 1: no log(0)
    return -tf.reduce_mean(tf.gather(log_p, y, axis=1, batch_dims=1))


def log_softmax_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    log_p = logits - tf.reduce_logsumexp(logits, axis=-1, keepdims=True)  # no probability is ever formed
    return -tf.reduce_mean(tf.gather(log_p, y, axis=1, batch_dims=1))


def framework_softmax_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Cures the overflow but still takes log of a probability, which is exactly 0 past a logit gap of ~87 on
    TensorFlow's CPU (denormals flushed to zero)."""
    return nll(tf.nn.softmax(logits), y)


def clip_logits_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    return hand_written_loss(y, tf.clip_by_value(logits, -LOGIT_LIMIT, LOGIT_LIMIT))


def build_training(seed: int, loss_fn) -> Training:
    data = make_data(seed)
    return Training(
        model=make_model(),
        optimizer=keras.optimizers.Adam(learning_rate=LR),
        loss_fn=loss_fn,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed),
        evaluate=accuracy(data.x_eval, data.y_eval),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, hand_written_loss)


def subtract_max(seed: int, device: str) -> Training:
    return build_training(seed, subtract_max_loss)


def log_softmax(seed: int, device: str) -> Training:
    return build_training(seed, log_softmax_loss)


def fused_loss(seed: int, device: str) -> Training:
    return build_training(seed, keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def clip_logits(seed: int, device: str) -> Training:
    return build_training(seed, clip_logits_loss)


SETTINGS = {"broken": broken, "subtract-max": subtract_max, "log-softmax": log_softmax,
            "fused-loss": fused_loss, "clip-logits": clip_logits}
