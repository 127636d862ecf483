"""float16 norm overflow in TensorFlow/Keras: a hand-written LayerNorm layer under the ``mixed_float16`` policy on
float16 readings; its fixes and two wrong fixes.

Policies are set per layer (``dtype="mixed_float16"``), never globally, so that no other model is affected. A
``mixed_float16`` layer computes in float16 (it casts its inputs to float16) and keeps its variables in float32.
"""
from nanlab.causes.fp16_norm_overflow import (BATCH_SIZE, CLAMP_VALUE, EPS, HIDDEN_UNITS, LARGER_EPS, LR,
                                              NUM_CLASSES, NUM_FEATURES, make_data, make_twin_data)
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, minibatches, tf

POLICY = "mixed_float16"


def layer_norm_statistics(x: tf.Tensor, eps: float) -> tf.Tensor:
    """``(x - E[x]) / sqrt(Var[x] + eps)`` over the last axis, in ``x``'s own dtype, with the one-pass variance."""
    mean = tf.reduce_mean(x, axis=-1, keepdims=True)
    variance = tf.reduce_mean(tf.square(x), axis=-1, keepdims=True) - tf.square(mean)  # float16: inf - inf = nan
    return (x - mean) * tf.math.rsqrt(variance + eps)


class HandWrittenLayerNorm(keras.layers.Layer):
    """A LayerNorm written out, with a gain and a bias; ``float32_statistics`` upcasts before squaring."""

    def __init__(self, eps: float = EPS, float32_statistics: bool = False, clamp: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.eps, self.float32_statistics, self.clamp = eps, float32_statistics, clamp

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="beta")

    def call(self, x):
        if self.clamp is not None:
            x = tf.clip_by_value(x, -self.clamp, self.clamp)  # T5's clamp: no value here is anywhere near it
        if self.float32_statistics:
            normalised = tf.cast(layer_norm_statistics(tf.cast(x, tf.float32), self.eps), x.dtype)
        else:
            normalised = layer_norm_statistics(x, self.eps)
        return normalised * self.gamma + self.beta


def make_model(norm: keras.layers.Layer, policy: str = POLICY) -> keras.Model:
    """The readings standardised per sample by ``norm``, then a small MLP, all computing in ``policy``; the logits
    leave in float32 (Keras guide)."""
    return keras.Sequential([
        keras.Input((NUM_FEATURES,), dtype="float16" if policy == POLICY else "float32"),
        norm,
        keras.layers.Dense(HIDDEN_UNITS, activation="relu", dtype=policy),
        keras.layers.Dense(NUM_CLASSES, dtype=policy),
        keras.layers.Activation("linear", dtype="float32"),
    ])


def build_training(seed: int, norm: keras.layers.Layer, policy: str = POLICY) -> Training:
    """The float16 readings into a ``mixed_float16`` model; ``policy="float32"``: both in float32."""
    data = make_data(seed)  # float16 readings
    x_train, x_eval = (data.x_train, data.x_eval) if policy == POLICY else (data.x_train.astype("float32"),
                                                                            data.x_eval.astype("float32"))
    return Training(
        model=make_model(norm, policy),
        optimizer=keras.optimizers.Adam(learning_rate=LR),
        loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        batches=minibatches(x_train, data.y_train, BATCH_SIZE, seed),
        evaluate=accuracy(x_eval, data.y_eval),
    )


def float32_baseline(seed: int, device: str) -> Training:
    """The broken setting's model and readings in float32: the same hand-written LayerNorm learns."""
    return build_training(seed, HandWrittenLayerNorm(dtype="float32", name="norm"), policy="float32")


def broken(seed: int, device: str) -> Training:
    return build_training(seed, HandWrittenLayerNorm(dtype=POLICY, name="norm"))


def float32_statistics(seed: int, device: str) -> Training:
    return build_training(seed, HandWrittenLayerNorm(float32_statistics=True, dtype=POLICY, name="norm"))


def framework_norm(seed: int, device: str) -> Training:
    return build_training(seed, keras.layers.LayerNormalization(epsilon=EPS, dtype=POLICY, name="norm"))


def larger_eps(seed: int, device: str) -> Training:
    return build_training(seed, HandWrittenLayerNorm(eps=LARGER_EPS, dtype=POLICY, name="norm"))


def clamp_activations(seed: int, device: str) -> Training:
    return build_training(seed, HandWrittenLayerNorm(clamp=CLAMP_VALUE, dtype=POLICY, name="norm"))


# -- the quiet twin: an RMSNorm, whose overflow gives zeros instead of NaN (the notebooks; not a catalogue setting)
class T5LayerNorm(keras.layers.Layer):
    """RMSNorm as T5 writes it, ``weight * x * rsqrt(mean(x**2) + eps)``; Hugging Face's computes the variance in
    float32 (``float32_statistics=True``)."""

    def __init__(self, eps: float = 1e-6, float32_statistics: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.eps, self.float32_statistics = eps, float32_statistics

    def build(self, input_shape):
        self.weight = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="weight")

    def call(self, x):
        h = tf.cast(x, tf.float32) if self.float32_statistics else x
        variance = tf.reduce_mean(tf.square(h), axis=-1, keepdims=True)  # float16: inf past |x| = 256
        return self.weight * tf.cast(h * tf.math.rsqrt(variance + self.eps), x.dtype)  # rsqrt(inf) = 0: zeros


def rms_norm_training(seed: int, device: str, float32_statistics: bool = False) -> Training:
    """Raw-unit features (about 300 times standardised ones) -> Dense -> T5LayerNorm -> ReLU -> Dense, all
    ``mixed_float16``: the first layer's outputs reach a few hundred and the norm sees them in float16."""
    data = make_twin_data(seed)
    model = keras.Sequential([
        keras.Input((NUM_FEATURES,)),
        keras.layers.Dense(HIDDEN_UNITS, dtype=POLICY),
        T5LayerNorm(float32_statistics=float32_statistics, dtype=POLICY, name="norm"),
        keras.layers.ReLU(dtype=POLICY),
        keras.layers.Dense(NUM_CLASSES, dtype=POLICY),
        keras.layers.Activation("linear", dtype="float32"),
    ])
    return Training(
        model=model,
        optimizer=keras.optimizers.Adam(learning_rate=LR),
        loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed),
        evaluate=accuracy(data.x_eval, data.y_eval),
    )


SETTINGS = {"broken": broken, "float32-statistics": float32_statistics, "framework-norm": framework_norm,
            "larger-eps": larger_eps, "clamp-activations": clamp_activations}
