"""Attention-logit growth in TensorFlow/Keras: one self-attention layer under the ``mixed_float16`` policy, its
query and key projections moving 100 times faster than the rest; its fixes and the soft-cap that only hides it.

Keras 3 optimizers have no parameter groups, so the faster projections are a multiplier: the layer computes
``QK_LR_MULTIPLIER * (h @ W)`` with ``W`` initialised ``QK_LR_MULTIPLIER`` times smaller. The initial projection is
the same; Adam's step on ``W`` is about the rate whatever the gradient's scale, so the projection moves 100 times
faster: the effect of torch's parameter group at 100 times the rate. Policies are set per layer (``dtype=...``),
never globally.
"""
import math

from nanlab.causes.attention_logit_growth import (BATCH_SIZE, LR, MODEL_DIM, NUM_CLASSES, NUM_FEATURES,
                                                  QK_LR_MULTIPLIER, SEQUENCE_LENGTH, SOFT_CAP, WARMUP_STEPS,
                                                  make_data)
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, minibatches, tf

POLICY = "mixed_float16"


class SelfAttention(keras.layers.Layer):
    """Single-head self-attention written out, ``softmax(q k^T / sqrt(d)) v``; ``multiplier`` scales the query and
    key projections (their weights initialised that much smaller), ``qk_norm`` adds a LayerNorm on each, ``soft_cap``
    caps the logits."""

    def __init__(self, dim: int, multiplier: float = 1.0, qk_norm: bool = False, soft_cap: float | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.dim, self.multiplier, self.qk_norm, self.soft_cap = dim, multiplier, qk_norm, soft_cap

    def build(self, input_shape):
        def projection(name, scale=1.0):
            initializer = keras.initializers.VarianceScaling(scale, mode="fan_in", distribution="uniform")
            return self.add_weight(shape=(input_shape[-1], self.dim), initializer=initializer, name=name)

        shrink = 1.0 / self.multiplier ** 2  # VarianceScaling's scale is a variance: 1 / multiplier**2
        self.query_kernel = projection("query", shrink)
        self.key_kernel = projection("key", shrink)
        self.value_kernel = projection("value")
        if self.qk_norm:
            self.query_norm = keras.layers.LayerNormalization(epsilon=1e-5, dtype=self.dtype_policy)
            self.key_norm = keras.layers.LayerNormalization(epsilon=1e-5, dtype=self.dtype_policy)

    def logits(self, h):
        q = self.multiplier * (h @ tf.cast(self.query_kernel, h.dtype))
        k = self.multiplier * (h @ tf.cast(self.key_kernel, h.dtype))
        if self.qk_norm:
            q, k = self.query_norm(q), self.key_norm(k)
        logits = tf.matmul(q, k, transpose_b=True) / math.sqrt(self.dim)  # float16: inf past 65504
        if self.soft_cap is not None:
            logits = self.soft_cap * tf.tanh(logits / self.soft_cap)  # Gemma 2's cap, after the product
        return logits

    def call(self, h):
        weights = tf.nn.softmax(self.logits(h), axis=-1)  # a row holding inf: inf - inf = nan
        return weights @ (h @ tf.cast(self.value_kernel, h.dtype))


def make_model(multiplier: float = QK_LR_MULTIPLIER, **attention) -> keras.Model:
    """Tokens -> Dense embedding -> self-attention -> the mean over the sequence -> Dense head, computing in
    ``mixed_float16``; the logits leave in float32 (Keras guide)."""
    return keras.Sequential([
        keras.Input((SEQUENCE_LENGTH, NUM_FEATURES + 1)),
        keras.layers.Dense(MODEL_DIM, dtype=POLICY, name="embed"),
        SelfAttention(MODEL_DIM, multiplier, dtype=POLICY, name="attention", **attention),
        keras.layers.GlobalAveragePooling1D(dtype=POLICY, name="mean"),
        keras.layers.Dense(NUM_CLASSES, dtype=POLICY, name="head"),
        keras.layers.Activation("linear", dtype="float32", name="logits"),
    ], name="attention_classifier")


class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """A linear warmup to ``peak`` over ``steps`` steps, then constant."""

    def __init__(self, peak: float, steps: int):
        self.peak, self.steps = peak, steps

    def __call__(self, step):
        return self.peak * tf.minimum(1.0, (tf.cast(step, tf.float32) + 1.0) / self.steps)

    def get_config(self):
        return {"peak": self.peak, "steps": self.steps}


def build_training(seed: int, learning_rate=LR, **model) -> Training:
    data = make_data(seed)
    return Training(
        model=make_model(**model),
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed),
        evaluate=accuracy(data.x_eval, data.y_eval),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed)


def qk_layernorm(seed: int, device: str) -> Training:
    return build_training(seed, qk_norm=True)


def lower_rate_warmup(seed: int, device: str) -> Training:
    return build_training(seed, learning_rate=Warmup(LR, WARMUP_STEPS), multiplier=1.0)


def soft_cap(seed: int, device: str) -> Training:
    return build_training(seed, soft_cap=SOFT_CAP)


SETTINGS = {"broken": broken, "qk-layernorm": qk_layernorm, "lower-rate-warmup": lower_rate_warmup,
            "soft-cap": soft_cap}
