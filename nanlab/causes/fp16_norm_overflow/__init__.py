"""float16 norm overflow: a normalisation's statistics computed in float16 overflow while the activations do not.

float16 stops at 65504 = 255.9**2: an activation of 300 is an ordinary float16 value, its square (90000) is inf.
A LayerNorm or RMSNorm written by hand squares its input to get the variance (the mean of squares), so under
float16 the statistic is inf for any row holding a value past 256, while every activation is finite.

What follows depends on how the statistic is used (measured in both frameworks):

- ``x * rsqrt(mean(x**2) + eps)`` (RMSNorm, T5LayerNorm without its float32 cast) and the two-pass LayerNorm
  ``(x - mean) * rsqrt(mean((x - mean)**2) + eps)``: ``rsqrt(inf) = 0``, so the row is normalised to exactly 0 and
  its gradient is exactly 0. No NaN ever reaches the loss: the model silently stops depending on those rows (the
  "wrong answers" of pytorch/pytorch#133085, the "zero after dividing infinity" of xlite-dev/LeetCUDA#335).
- the one-pass variance ``E[x**2] - E[x]**2`` (the formula of Keras' ``moments`` on the torch backend, which casts
  float16 to float32 first for this reason): when the row's mean is past 256 too, the variance is
  ``inf - inf = NaN`` and the loss is NaN at once.

The recipe is the second (a catalogue of NaN causes needs a run that goes non-finite); the notebooks show the
first beside it. The data are sensor readings in kelvin (about 300 K) stored in float16 to halve their memory,
standardised per sample by a hand-written LayerNorm as the model's first layer: in float32 it learns; in
float16 every batch's variance is NaN from step 0. The inputs themselves (at most ~400) are far inside float16's
range, which is what sets this cause apart from ``fp16-overflow``.
"""
import numpy as np

from nanlab.data import Dataset, make_blobs
from nanlab.registry import Cause, Fix

NUM_CLASSES = 4
NUM_FEATURES = 20
HIDDEN_UNITS = 32
BATCH_SIZE = 32
LR = 1e-2  # Adam
OFFSET = 300.0  # kelvin: the readings' level, the same for every sensor
SPREAD = 20.0  # kelvin per standard deviation of the standardised class clusters
EPS = 1e-5  # the LayerNorm's epsilon (torch's and Keras' default is 1e-5 and 1e-3)
LARGER_EPS = 1e-2  # the wrong fix "a larger epsilon for float16": 1000 times EPS
FLOAT16_MAX = 65504.0
SQUARE_LIMIT = float(np.sqrt(FLOAT16_MAX))  # 255.94: the largest value whose square float16 still holds
CLAMP_VALUE = FLOAT16_MAX - 1000.0  # the wrong fix: Hugging Face T5's clamp, finfo(float16).max - 1000
TWIN_SCALE = 300.0  # the quiet twin's raw-unit inputs: standardised features times 300

CAUSE = Cause(
    id="fp16-norm-overflow",
    number=19,
    title="float16 norm overflow: the statistics of a normalisation in float16",
    mechanism="a normalisation written by hand computes its statistics in float16: the mean of squares of "
              "activations past 256 is past 65504 (256**2 = 65536), so it is inf while every activation is "
              "finite; rsqrt(inf) = 0 zeroes the row (RMSNorm, a two-pass LayerNorm) and the one-pass variance "
              "E[x**2] - E[x]**2 is inf - inf = NaN",
    when="under float16 (autocast, mixed_float16, a model or data in half precision) when a hand-written LayerNorm "
         "or RMSNorm sees activations or inputs above 256 in magnitude (raw-unit inputs, a residual stream that "
         "grew); the framework's own norm layers compute their statistics in float32",
    symptom="the loss is NaN from the first step in float16 while the float32 run learns, and no activation is "
            "anywhere near 65504; the first non-finite value is the square inside the norm (x * x = inf from "
            "inputs of a few hundred); an RMSNorm in the same place gives no NaN at all, it zeroes the rows and "
            "the model stops learning",
    fixes=(
        Fix("float32-statistics", "compute the norm's statistics in float32: upcast x before squaring and cast "
            "the result back (as Hugging Face's T5LayerNorm and LlamaRMSNorm do)"),
        Fix("framework-norm", "the framework's LayerNorm (nn.LayerNorm / keras.layers.LayerNormalization), whose "
            "statistics are computed in float32 for float16 inputs"),
        Fix("larger-eps", "a larger epsilon (1e-2): it keeps the variance away from 0, but the square has already "
            "overflowed and inf - inf + eps is still NaN", hides_problem=True, still_nonfinite=True),
        Fix("clamp-activations", "clamp the activations to finfo(float16).max - 1000 (Hugging Face T5's and BART's "
            "clamp): every value is already far below it, while its square is not", hides_problem=True,
            still_nonfinite=True),
    ),
    frameworks=("torch", "tensorflow"),
    steps=30,
    score_name="held-out accuracy",
    pass_score=0.8,
    sources=(
        "huggingface/transformers#5651 and #9295: T5 in float16 overflows; T5LayerNorm computes its variance in "
        "float32 ('layer norm should always be calculated in float32') and T5 clamps hidden states to "
        "finfo(float16).max - 1000 (https://github.com/huggingface/transformers/issues/9295)",
        "pytorch/pytorch#133085: nn.RMSNorm gave wrong answers in float16 from the overflow of pow(input, 2), "
        "where Hugging Face's LlamaRMSNorm, which upcasts, did not (https://github.com/pytorch/pytorch/pull/133085)",
        "xlite-dev/LeetCUDA#335: float16 layer_norm and rms_norm overflow and give zero after dividing by "
        "infinity (https://github.com/xlite-dev/LeetCUDA/pull/335)",
        "Keras source, ops.moments: 'The dynamic range of float16 is too limited for statistics', so float16 "
        "inputs are cast to float32; LayerNormalization and RMSNormalization compute in at least float32",
        "PyTorch docs, Automatic Mixed Precision: on CUDA, layer_norm, group_norm, pow, rsqrt and sum autocast "
        "to float32 (https://pytorch.org/docs/stable/amp.html#autocast-op-reference)",
    ),
    package=__name__,
)


def make_twin_data(seed: int) -> Dataset:
    """The quiet twin's data: the same four classes as standardised features times ``TWIN_SCALE`` (raw units,
    float32), so that the first layer's outputs reach a few hundred."""
    data = make_blobs(seed, NUM_CLASSES, NUM_FEATURES, num_samples=1024, spread=1.0)
    return Dataset(data.x_train * TWIN_SCALE, data.y_train, data.x_eval * TWIN_SCALE, data.y_eval)


def make_data(seed: int) -> Dataset:
    """Four classes of 20 sensor readings in kelvin, ``OFFSET + SPREAD * z`` for standardised class clusters ``z``
    (about 230-370 K), stored in float16 (which holds them to a quarter of a kelvin)."""
    data = make_blobs(seed, NUM_CLASSES, NUM_FEATURES, num_samples=1024, spread=1.0)
    kelvin = lambda z: (OFFSET + SPREAD * z).astype(np.float16)  # noqa: E731
    return Dataset(kelvin(data.x_train), data.y_train, kelvin(data.x_eval), data.y_eval)
