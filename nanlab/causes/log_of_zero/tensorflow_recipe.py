"""Log of zero in TensorFlow/Keras: a hand-written cross-entropy on softmax probabilities, its fixes and its wrong
fixes."""
from nanlab.causes.log_of_zero import (BATCH_SIZE, EPS, HIDDEN_UNITS, LOG_FLOOR, LR, MIN_PROB, NUM_CLASSES,
                                       NUM_FEATURES, make_data)
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, minibatches, tf


def make_model(dtype: str = "float32") -> keras.Model:
    return keras.Sequential([
        keras.Input((NUM_FEATURES,), dtype=dtype),
        keras.layers.Dense(HIDDEN_UNITS, activation="relu", dtype=dtype),
        keras.layers.Dense(NUM_CLASSES, dtype=dtype),
    ])


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
