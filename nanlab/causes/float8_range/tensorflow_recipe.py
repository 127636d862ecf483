"""float8 range in TensorFlow/Keras: a hand-written float8 Dense layer on raw counts, its input cast to e5m2
without a scale; the per-tensor scaling fix and the saturating clip that only hides it.

TensorFlow 2.21 has the float8 dtypes (``tf.dtypes.experimental.float8_e5m2``, ``float8_e4m3fn``) but on the CPU
only ``tf.cast`` accepts them (no arithmetic, no ``is_finite``), and the cast has no gradient; so the layer casts
to float8 and straight back to float32 inside a ``tf.custom_gradient`` that passes the gradient through (a
straight-through estimator, as float8 emulation and fake quantisation do). Its cast of e4m3fn does not saturate: a
value past 448 becomes NaN, so the saturating fix clips before the cast.
"""
from nanlab.causes.float8_range import (BATCH_SIZE, E4M3_MAX, E5M2_MAX, HIDDEN_UNITS, LR, NUM_CLASSES,
                                        NUM_FEATURES, make_data)
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, minibatches, tf

E4M3 = tf.dtypes.experimental.float8_e4m3fn
E5M2 = tf.dtypes.experimental.float8_e5m2
FORMAT_MAX = {E4M3: E4M3_MAX, E5M2: E5M2_MAX}


def through_float8(x: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """``x`` cast to ``dtype`` and back to float32; the gradient passes through unchanged."""

    @tf.custom_gradient
    def cast(value):
        return tf.cast(tf.cast(value, dtype), tf.float32), lambda upstream: upstream

    return cast(tf.convert_to_tensor(x))  # a variable is read here, outside the custom gradient


def to_float8(x: tf.Tensor, dtype: tf.DType, scaled: bool) -> tf.Tensor:
    """The values a float8 matmul would read; ``scaled``: per-tensor dynamic scaling, ``fp8_max / amax``."""
    if not scaled:
        return through_float8(x, dtype)
    scale = FORMAT_MAX[dtype] / tf.maximum(tf.stop_gradient(tf.reduce_max(tf.abs(x))), 1e-12)
    return through_float8(x * scale, dtype) / scale


class Float8Dense(keras.layers.Layer):
    """A Dense layer computed from float8 values: the input cast to ``input_dtype``, the kernel to e4m3fn, the
    product in float32."""

    def __init__(self, units: int, input_dtype=E5M2, scaled: bool = False, saturate: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.units, self.float8_dtype, self.scaled, self.saturate = units, input_dtype, scaled, saturate

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform",
                                      name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, x):
        if self.saturate:
            x = tf.clip_by_value(x, -FORMAT_MAX[self.float8_dtype], FORMAT_MAX[self.float8_dtype])
        x8 = to_float8(x, self.float8_dtype, self.scaled)  # e5m2, unscaled: inf past 57344
        w8 = to_float8(self.kernel, E4M3, self.scaled)
        return x8 @ w8 + self.bias


def make_model(first: keras.layers.Layer) -> keras.Model:
    return keras.Sequential([
        keras.Input((NUM_FEATURES,)),
        first,
        keras.layers.LayerNormalization(name="norm"),
        keras.layers.ReLU(name="relu"),
        keras.layers.Dense(NUM_CLASSES, name="head"),
    ], name="float8_mlp")


def build_training(seed: int, first: keras.layers.Layer) -> Training:
    data = make_data(seed)
    return Training(
        model=make_model(first),
        optimizer=keras.optimizers.Adam(learning_rate=LR),
        loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed),
        evaluate=accuracy(data.x_eval, data.y_eval),
    )


def float32_baseline(seed: int, device: str) -> Training:
    """The same model with a plain float32 first layer: it learns."""
    return build_training(seed, keras.layers.Dense(HIDDEN_UNITS, name="float8_dense"))


def broken(seed: int, device: str) -> Training:
    return build_training(seed, Float8Dense(HIDDEN_UNITS, E5M2, name="float8_dense"))


def per_tensor_scaling(seed: int, device: str) -> Training:
    return build_training(seed, Float8Dense(HIDDEN_UNITS, E4M3, scaled=True, name="float8_dense"))


def saturate(seed: int, device: str) -> Training:
    return build_training(seed, Float8Dense(HIDDEN_UNITS, E4M3, saturate=True, name="float8_dense"))


SETTINGS = {"broken": broken, "per-tensor-scaling": per_tensor_scaling, "saturate": saturate}
