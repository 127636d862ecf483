"""fp16 overflow in TensorFlow/Keras: a ``mixed_float16`` model whose first layer sees raw-unit inputs, trained
with a LossScaleOptimizer; its fixes and the wrong fix of a larger loss scale.

Policies are set per layer (``dtype="mixed_float16"``), never globally, so that no other model is affected.
"""
from nanlab.causes.fp16_overflow import (BATCH_SIZE, HIDDEN_UNITS, LR, NUM_CLASSES, NUM_FEATURES,
                                         RAISED_LOSS_SCALE, RAW_SCALE, make_data)
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, minibatches, tf


def make_model(policy: str, first_policy: str | None = None, rescale: bool = False) -> keras.Model:
    """Dense -> LayerNorm -> ReLU -> Dense, computing in ``policy``; the logits leave in float32 (Keras guide).

    ``first_policy`` overrides the first Dense's policy; ``rescale`` divides the raw input by ``RAW_SCALE``
    first, in float32 (a float16 layer would cast the raw input to float16, and overflow, before rescaling).
    """
    layers = [keras.Input((NUM_FEATURES,))]
    if rescale:
        layers.append(keras.layers.Rescaling(1 / RAW_SCALE, dtype="float32"))
    layers += [
        keras.layers.Dense(HIDDEN_UNITS, dtype=first_policy or policy),
        keras.layers.LayerNormalization(dtype=policy),
        keras.layers.ReLU(dtype=policy),
        keras.layers.Dense(NUM_CLASSES, dtype=policy),
        keras.layers.Activation("linear", dtype="float32"),
    ]
    return keras.Sequential(layers)


def scaled_loss(optimizer: keras.optimizers.LossScaleOptimizer):
    """Cross-entropy multiplied by the current loss scale, as a GradientTape loop must hand it to a
    LossScaleOptimizer (whose ``apply`` divides the gradients by the scale and skips non-finite steps)."""
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def loss_fn(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        return optimizer.scale_loss(cross_entropy(y, logits))

    return loss_fn


def build_training(seed: int, model: keras.Model, optimizer: keras.optimizers.Optimizer, loss_fn) -> Training:
    data = make_data(seed)
    return Training(
        model=model,
        optimizer=optimizer,
        loss_fn=loss_fn,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed),
        evaluate=accuracy(data.x_eval, data.y_eval),
    )


def loss_scaled_training(seed: int, model: keras.Model, initial_scale: float) -> Training:
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(LR), initial_scale=initial_scale)
    return build_training(seed, model, optimizer, scaled_loss(optimizer))


def plain_training(seed: int, model: keras.Model) -> Training:
    return build_training(seed, model, keras.optimizers.Adam(LR),
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def broken(seed: int, device: str) -> Training:
    return loss_scaled_training(seed, make_model("mixed_float16"), initial_scale=2.0 ** 15)  # Keras' default


def bfloat16(seed: int, device: str) -> Training:
    return plain_training(seed, make_model("mixed_bfloat16"))  # float32's range: no loss scaling needed


def float32_layer(seed: int, device: str) -> Training:
    return plain_training(seed, make_model("mixed_float16", first_policy="float32"))


def rescale_input(seed: int, device: str) -> Training:
    return plain_training(seed, make_model("mixed_float16", rescale=True))


def raise_loss_scale(seed: int, device: str) -> Training:
    return loss_scaled_training(seed, make_model("mixed_float16"), initial_scale=RAISED_LOSS_SCALE)


SETTINGS = {"broken": broken, "bfloat16": bfloat16, "float32-layer": float32_layer,
            "rescale-input": rescale_input, "raise-loss-scale": raise_loss_scale}
