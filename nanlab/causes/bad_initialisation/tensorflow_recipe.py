"""Bad initialisation in TensorFlow/Keras: a 20-layer ReLU MLP with N(0, 1) weights, its fixes and the vanishing
twin."""
from typing import Callable

from nanlab.causes.bad_initialisation import (BAD_STD, BATCH_NORM_LR, BATCH_SIZE, DEPTH, LR, MOMENTUM, NUM_CLASSES,
                                              NUM_FEATURES, SMALL_STD, WIDTH, make_data)
from nanlab.frameworks.tensorflow.loop import CompiledForward, Training, accuracy, keras, minibatches


Initializer = Callable[[], keras.initializers.Initializer]


def make_model(initializer: Initializer, batch_norm: bool = False, depth: int = DEPTH,
               width: int = WIDTH) -> keras.Model:
    """``depth`` x (Dense -> [BatchNormalization] -> ReLU), then a linear head; ``initializer()`` makes each
    kernel's initializer. Layers are named ``hidden_1`` .. ``hidden_{depth}``, ``logits``, so that reports and
    errors say which layer (not ``dense_24``, a counter over every Dense built in the process).

    A new initializer per layer: Keras 3 draws the same values from one unseeded initializer instance every time
    it is called (measured: the nineteen 64x64 hidden kernels identical), so the layers are copies of one matrix,
    not independent draws, and the variance argument behind He's scale no longer applies.
    """
    layers = [keras.Input((NUM_FEATURES,))]
    for index in range(1, depth + 1):
        layers.append(keras.layers.Dense(width, kernel_initializer=initializer(), name=f"hidden_{index}"))
        if batch_norm:  # momentum 0.9 = PyTorch's momentum 0.1
            layers.append(keras.layers.BatchNormalization(momentum=0.9, name=f"batch_norm_{index}"))
        layers.append(keras.layers.ReLU(name=f"relu_{index}"))
    layers.append(keras.layers.Dense(NUM_CLASSES, kernel_initializer=initializer(), name="logits"))
    return keras.Sequential(layers, name="deep_mlp")


def standard_normal() -> keras.initializers.Initializer:
    return keras.initializers.RandomNormal(stddev=BAD_STD)  # what tf.random.normal as a kernel gives


def he_normal() -> keras.initializers.Initializer:
    return keras.initializers.HeNormal()  # std sqrt(2 / fan_in), truncated at two standard deviations


def small_normal() -> keras.initializers.Initializer:
    return keras.initializers.RandomNormal(stddev=SMALL_STD)


def build_training(seed: int, initializer: Initializer, batch_norm: bool = False,
                   lr: float = LR) -> Training:
    data = make_data(seed)
    return Training(
        model=CompiledForward(make_model(initializer, batch_norm)),
        optimizer=keras.optimizers.SGD(learning_rate=lr, momentum=MOMENTUM),
        loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed),
        evaluate=accuracy(data.x_eval, data.y_eval),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, standard_normal)


def he_init(seed: int, device: str) -> Training:
    return build_training(seed, he_normal)


def batch_norm(seed: int, device: str) -> Training:
    return build_training(seed, standard_normal, batch_norm=True, lr=BATCH_NORM_LR)


def small_init(seed: int, device: str) -> Training:
    return build_training(seed, small_normal)


SETTINGS = {"broken": broken, "he-init": he_init, "batch-norm": batch_norm, "small-init": small_init}
