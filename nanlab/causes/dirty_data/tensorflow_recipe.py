"""Dirty data in TensorFlow/Keras: a NaN and an Inf record in the training set, three ways to clean it, one to
hide it."""
from typing import Iterator

from nanlab.causes.dirty_data import (BATCH_SIZE, HIDDEN_UNITS, LR, NUM_CLASSES, NUM_FEATURES, drop_corrupt_records,
                                      impute_corrupt_values, make_data)
from nanlab.data import Dataset
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, minibatches, tf


def make_model() -> keras.Model:
    return keras.Sequential([
        keras.Input((NUM_FEATURES,)),
        keras.layers.Dense(HIDDEN_UNITS, activation="relu"),
        keras.layers.Dense(NUM_CLASSES),
    ])


cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build_training(data: Dataset, seed: int, loss_fn=cross_entropy, batches=None) -> Training:
    return Training(
        model=make_model(),
        optimizer=keras.optimizers.SGD(learning_rate=LR),
        loss_fn=loss_fn,
        batches=batches or minibatches(data.x_train, data.y_train, BATCH_SIZE, seed),
        evaluate=accuracy(data.x_eval, data.y_eval),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(make_data(seed), seed)


def drop_corrupt(seed: int, device: str) -> Training:
    return build_training(drop_corrupt_records(make_data(seed)), seed)


def impute_corrupt(seed: int, device: str) -> Training:
    return build_training(impute_corrupt_values(make_data(seed)), seed)


def skip_corrupt(batches: Iterator) -> Iterator:
    """Validate each batch as it loads: records with a non-finite feature never reach the model (in a tf.data
    pipeline: ``dataset.filter(lambda x, y: tf.reduce_all(tf.math.is_finite(x)))``)."""
    for x, y in batches:
        finite = tf.reduce_all(tf.math.is_finite(tf.reshape(x, (tf.shape(x)[0], -1))), axis=1)
        yield tf.boolean_mask(x, finite), tf.boolean_mask(y, finite)


def skip_in_loader(seed: int, device: str) -> Training:
    data = make_data(seed)
    return build_training(data, seed, batches=skip_corrupt(minibatches(data.x_train, data.y_train, BATCH_SIZE, seed)))


def nan_to_num_loss(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    loss = cross_entropy(y, logits)
    return tf.where(tf.math.is_finite(loss), loss, tf.zeros_like(loss))  # 0.0 for the bad batch; gradient NaN


def nan_to_num(seed: int, device: str) -> Training:
    return build_training(make_data(seed), seed, loss_fn=nan_to_num_loss)


SETTINGS = {"broken": broken, "drop-corrupt-records": drop_corrupt, "impute-corrupt-values": impute_corrupt,
            "skip-in-loader": skip_in_loader, "nan-to-num-loss": nan_to_num}
