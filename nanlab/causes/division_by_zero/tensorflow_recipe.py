"""Division by zero in TensorFlow/Keras: a class-balanced loss divided by per-class counts, its fixes and the
where() trap."""
from nanlab.causes.division_by_zero import (BATCH_SIZE, EPS, HIDDEN_UNITS, LR, NUM_CLASSES, NUM_FEATURES,
                                            make_data)
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, minibatches, tf


def make_model() -> keras.Model:
    return keras.Sequential([
        keras.Input((NUM_FEATURES,)),
        keras.layers.Dense(HIDDEN_UNITS, activation="relu"),
        keras.layers.Dense(NUM_CLASSES),
    ])


def class_sums_and_counts(y: tf.Tensor, logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per class: the summed cross-entropy of its samples in the batch, and how many samples it has (maybe 0)."""
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    one_hot = tf.one_hot(y, NUM_CLASSES)
    return tf.linalg.matvec(one_hot, losses, transpose_a=True), tf.reduce_sum(one_hot, axis=0)


def class_balanced_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    sums, counts = class_sums_and_counts(y, logits)
    return tf.reduce_mean(sums / counts)  # a class absent from the batch: 0 / 0 = nan


def eps_denominator_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    sums, counts = class_sums_and_counts(y, logits)
    return tf.reduce_mean(sums / (counts + EPS))


def guard_count_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    sums, counts = class_sums_and_counts(y, logits)
    return tf.reduce_mean(sums / tf.maximum(counts, 1.0))


def safe_divide_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    sums, counts = class_sums_and_counts(y, logits)
    return tf.reduce_mean(tf.math.divide_no_nan(sums, counts))


def where_guard_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    sums, counts = class_sums_and_counts(y, logits)
    return tf.reduce_mean(tf.where(counts == 0, 0.0, sums / counts))  # finite value, nan gradient


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
    return build_training(seed, class_balanced_loss)


def eps_denominator(seed: int, device: str) -> Training:
    return build_training(seed, eps_denominator_loss)


def guard_count(seed: int, device: str) -> Training:
    return build_training(seed, guard_count_loss)


def safe_divide(seed: int, device: str) -> Training:
    return build_training(seed, safe_divide_loss)


def where_guard(seed: int, device: str) -> Training:
    return build_training(seed, where_guard_loss)


SETTINGS = {"broken": broken, "eps-denominator": eps_denominator, "guard-count": guard_count,
            "safe-divide": safe_divide, "where-guard": where_guard}
