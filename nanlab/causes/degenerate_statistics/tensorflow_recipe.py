"""Degenerate statistics in TensorFlow/Keras: a batch standardisation layer with a hand-written unbiased std (as
torch.std computes it by default; TensorFlow's own reduce_std is the population std), fed by a tf.data pipeline
whose last batch holds one sample, and its fixes."""
from typing import Iterator

from nanlab.causes.degenerate_statistics import (BATCH_SIZE, EPS, HIDDEN_UNITS, LR, NUM_CLASSES, NUM_FEATURES,
                                                 make_data)
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, tf


def unbiased_variance(h: tf.Tensor) -> tf.Tensor:
    n = tf.cast(tf.shape(h)[0], h.dtype)
    return tf.reduce_sum(tf.square(h - tf.reduce_mean(h, axis=0)), axis=0) / (n - 1.0)  # one sample: 0 / 0 = nan


def batch_standardize(h: tf.Tensor) -> tf.Tensor:
    return (h - tf.reduce_mean(h, axis=0)) / tf.sqrt(unbiased_variance(h))


def eps_on_std(h: tf.Tensor) -> tf.Tensor:
    return (h - tf.reduce_mean(h, axis=0)) / (tf.sqrt(unbiased_variance(h)) + EPS)  # nan + eps = nan


def nan_to_zero_variance(h: tf.Tensor) -> tf.Tensor:
    variance = unbiased_variance(h)
    variance = tf.where(tf.math.is_nan(variance), 0.0, variance)  # a finite forward; the gradient is still 0 / 0
    return (h - tf.reduce_mean(h, axis=0)) / tf.sqrt(variance + EPS)


def population_standardize(h: tf.Tensor) -> tf.Tensor:
    return (h - tf.reduce_mean(h, axis=0)) / tf.sqrt(tf.math.reduce_variance(h, axis=0) + EPS)  # one sample -> 0


class BatchStandardization(keras.layers.Layer):
    """Standardises each unit over the batch with the given function (a batch norm without running statistics; a
    layer, so that the watch can name it)."""

    def __init__(self, standardize, **kwargs):
        super().__init__(**kwargs)
        self.standardize = standardize

    def call(self, h):
        return self.standardize(h)


def make_model(standardize) -> keras.Model:
    """A hidden layer standardised over the batch, a ReLU and a linear head."""
    return keras.Sequential([
        keras.Input((NUM_FEATURES,)),
        keras.layers.Dense(HIDDEN_UNITS),
        BatchStandardization(standardize, name="standardize"),
        keras.layers.ReLU(),
        keras.layers.Dense(NUM_CLASSES),
    ])


def make_dataset(x, y, seed: int, drop_remainder: bool) -> tf.data.Dataset:
    """Shuffled batches of 32, reshuffled every epoch, repeated; 257 samples leave a last batch of one unless
    dropped."""
    return (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
            .batch(BATCH_SIZE, drop_remainder=drop_remainder).repeat())


def epochs(dataset: tf.data.Dataset) -> Iterator[tuple[tf.Tensor, tf.Tensor]]:
    return iter(dataset)


def build_training(seed: int, standardize, drop_remainder: bool = False) -> Training:
    data = make_data(seed)
    return Training(
        model=make_model(standardize),
        optimizer=keras.optimizers.Adam(learning_rate=LR),
        loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        batches=epochs(make_dataset(data.x_train, data.y_train, seed, drop_remainder)),
        evaluate=accuracy(data.x_eval, data.y_eval),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, batch_standardize)


def population_std(seed: int, device: str) -> Training:
    return build_training(seed, population_standardize)


def drop_remainder(seed: int, device: str) -> Training:
    return build_training(seed, batch_standardize, drop_remainder=True)


def eps_std(seed: int, device: str) -> Training:
    return build_training(seed, eps_on_std)


def nan_to_zero(seed: int, device: str) -> Training:
    return build_training(seed, nan_to_zero_variance)


SETTINGS = {"broken": broken, "population-std": population_std, "drop-last": drop_remainder, "eps-on-std": eps_std,
            "nan-to-zero": nan_to_zero}
