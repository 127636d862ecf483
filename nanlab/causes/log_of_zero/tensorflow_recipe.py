"""Log of zero in TensorFlow/Keras: a hand-written cross-entropy on softmax probabilities, its fixes and its wrong
fixes; and the log of a negative number (a Poisson rate head), which the notebook shows in a section of its own."""
import math

import numpy as np

from nanlab.causes.log_of_zero import (BATCH_SIZE, COUNT_FEATURES, COUNT_HIDDEN_UNITS, COUNT_LR, EPS, HIDDEN_UNITS,
                                       LOG_FLOOR, LR, MIN_PROB, NUM_CLASSES, NUM_FEATURES, make_counts, make_data)
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, minibatches, tf


def make_model(dtype: str = "float32") -> keras.Model:
    return keras.Sequential([
        keras.Input((NUM_FEATURES,), dtype=dtype),
        keras.layers.Dense(HIDDEN_UNITS, activation="relu", dtype=dtype, name="hidden"),
        keras.layers.Dense(NUM_CLASSES, dtype=dtype, name="logits"),
    ], name="mlp")


def hand_written_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    p = tf.nn.softmax(logits)
    return -tf.reduce_mean(tf.reduce_sum(tf.one_hot(y, NUM_CLASSES, dtype=p.dtype) * tf.math.log(p), axis=-1))


def clip_input_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    p = tf.nn.softmax(logits)
    log_p = tf.math.log(tf.clip_by_value(p, MIN_PROB, 1.0))
    return -tf.reduce_mean(tf.reduce_sum(tf.one_hot(y, NUM_CLASSES) * log_p, axis=-1))


def add_eps_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    p = tf.nn.softmax(logits)
    return -tf.reduce_mean(tf.reduce_sum(tf.one_hot(y, NUM_CLASSES) * tf.math.log(p + EPS), axis=-1))


def clip_log_output_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    p = tf.nn.softmax(logits)
    log_p = tf.clip_by_value(tf.math.log(p), LOG_FLOOR, 0.0)
    return -tf.reduce_mean(tf.reduce_sum(tf.one_hot(y, NUM_CLASSES) * log_p, axis=-1))


def build_training(seed: int, loss_fn, dtype: str = "float32") -> Training:
    data = make_data(seed)
    return Training(
        model=make_model(dtype),
        optimizer=keras.optimizers.Adam(learning_rate=LR),
        loss_fn=loss_fn,
        batches=minibatches(data.x_train.astype(dtype), data.y_train, BATCH_SIZE, seed),
        evaluate=accuracy(data.x_eval.astype(dtype), data.y_eval),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, hand_written_loss)


def fused_loss(seed: int, device: str) -> Training:
    return build_training(seed, keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def clip_input(seed: int, device: str) -> Training:
    return build_training(seed, clip_input_loss)


def add_eps(seed: int, device: str) -> Training:
    return build_training(seed, add_eps_loss)


def clip_log_output(seed: int, device: str) -> Training:
    return build_training(seed, clip_log_output_loss)


def float64(seed: int, device: str) -> Training:
    return build_training(seed, hand_written_loss, dtype="float64")


SETTINGS = {"broken": broken, "fused-loss": fused_loss, "clip-input": clip_input, "add-eps": add_eps,
            "clip-log-output": clip_log_output, "float64": float64}


# -- log of a negative number: a count model ---------------------------------------------------------------------

def make_count_model(initial_bias: float) -> keras.Model:
    return keras.Sequential([
        keras.Input((COUNT_FEATURES,)),
        keras.layers.Dense(COUNT_HIDDEN_UNITS, activation="relu", name="hidden"),
        keras.layers.Dense(1, bias_initializer=keras.initializers.Constant(initial_bias), name="head"),
    ], name="count_model")


def hand_written_poisson_loss(y: tf.Tensor, rate: tf.Tensor) -> tf.Tensor:
    rate = tf.squeeze(rate, -1)
    return tf.reduce_mean(rate - y * tf.math.log(rate))  # nothing keeps rate > 0: log(negative) = nan


def log_rate_poisson_loss(y: tf.Tensor, log_rate: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.nn.log_poisson_loss(y, tf.squeeze(log_rate, -1)))  # exp(log_rate) - y * log_rate


def count_error(x: np.ndarray, y: np.ndarray, log_rate_head: bool):
    """An ``evaluate`` function: the mean absolute error of the predicted rate on held-out counts."""
    features = tf.constant(x)

    def evaluate(model: keras.Model) -> float:
        output = model(features, training=False).numpy()[:, 0]
        rate = np.exp(output) if log_rate_head else output
        return float(np.mean(np.abs(rate - y)))

    return evaluate


def build_count_training(seed: int, log_rate_head: bool) -> Training:
    data = make_counts(seed)
    mean_count = float(data.y_train.mean())  # every prediction starts near the mean count: a sensible, positive rate
    return Training(
        model=make_count_model(math.log(mean_count) if log_rate_head else mean_count),
        optimizer=keras.optimizers.Adam(learning_rate=COUNT_LR),
        loss_fn=log_rate_poisson_loss if log_rate_head else hand_written_poisson_loss,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed),
        evaluate=count_error(data.x_eval, data.y_eval, log_rate_head),
    )


def rate_head(seed: int, device: str) -> Training:
    """The head outputs the rate itself; nothing keeps it above 0."""
    return build_count_training(seed, log_rate_head=False)


def log_rate_head(seed: int, device: str) -> Training:
    """The head outputs log(rate); the loss works in log space (the fused-loss idea for counts)."""
    return build_count_training(seed, log_rate_head=True)
