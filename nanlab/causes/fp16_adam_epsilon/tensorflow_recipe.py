"""Adam's epsilon in float16, Keras: a ``dtype="float16"`` MLP with Adam at ``epsilon=1e-8`` (PyTorch's default),
and its fixes. Keras' own default epsilon is 1e-7, which float16 rounds to 1.19e-7 rather than 0."""
import numpy as np

from nanlab.causes.fp16_adam_epsilon import (BATCH_SIZE, BROKEN_EPS, HIDDEN_UNITS, LR, NUM_CLASSES, NUM_FEATURES,
                                             SAFE_EPS, make_data)
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, minibatches


def make_model(dtype: str) -> keras.Model:
    """The logits leave in float32 (Keras' mixed-precision guide) so that the loss is computed in float32."""
    return keras.Sequential([
        keras.Input((NUM_FEATURES,)),
        keras.layers.Dense(HIDDEN_UNITS, activation="relu", dtype=dtype),
        keras.layers.Dense(NUM_CLASSES, dtype=dtype),
        keras.layers.Activation("linear", dtype="float32"),
    ])


def build_training(seed: int, dtype: str, epsilon: float) -> Training:
    data = make_data(seed)
    input_dtype = np.float16 if dtype == "float16" else np.float32
    return Training(
        model=make_model(dtype),
        optimizer=keras.optimizers.Adam(LR, epsilon=epsilon),
        loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        batches=minibatches(data.x_train.astype(input_dtype), data.y_train, BATCH_SIZE, seed),
        evaluate=accuracy(data.x_eval.astype(input_dtype), data.y_eval),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, "float16", BROKEN_EPS)  # float16 variables, so Adam's m and v are float16 too


def larger_eps(seed: int, device: str) -> Training:
    return build_training(seed, "float16", SAFE_EPS)


def float32_master_weights(seed: int, device: str) -> Training:
    return build_training(seed, "mixed_float16", BROKEN_EPS)  # float32 variables, float16 compute


SETTINGS = {"broken": broken, "larger-eps": larger_eps, "float32-master-weights": float32_master_weights}
