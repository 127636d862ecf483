"""Unnormalised inputs: raw 0-255 pixels fed to a linear regressor trained with plain SGD.

The curvature of a squared-error loss grows with the square of the input scale: a linear layer on inputs of
magnitude 255 sees a Hessian ~255^2 = 65025 times larger than on inputs in [0, 1], so a learning rate that is fine
for scaled pixels overshoots by four orders of magnitude; the weights grow geometrically and float32 overflows
within a few steps. A cross-entropy classifier on the same raw pixels does not go NaN (its gradient is bounded),
it just learns badly.
"""
import numpy as np

from nanlab.data import Dataset
from nanlab.registry import Cause, Fix

IMAGE_SIDE = 4
NUM_FEATURES = IMAGE_SIDE * IMAGE_SIDE  # 4x4 "images", one feature per pixel
BATCH_SIZE = 32
NUM_SAMPLES = 640
PIXEL_MAX = 255.0
LR = 0.1
LOW_LR = 1e-6  # the wrong fix: below the stability limit 2/λmax ≈ 3e-6 of raw pixels, so it stays finite

CAUSE = Cause(
    id="unnormalised-inputs",
    number=8,
    title="Unnormalised inputs (raw 0-255 pixels)",
    mechanism="the curvature of a squared-error loss scales with the square of the inputs: on raw pixels (~255) "
              "it is ~65000 times that on pixels in [0, 1], so SGD at a rate that suits scaled inputs overshoots "
              "every step, the weights grow geometrically and float32 overflows",
    when="within the first few steps of training (here at step 4 in every seed checked), since the inputs' scale is "
         "there from the first batch",
    symptom="loss in the hundreds or thousands at step 0, then 1e8, 1e20, inf, nan within a few steps; the "
            "gradient norm climbs by orders of magnitude per step, exactly like a too-high learning rate; the "
            "inputs' max |x| is far above ~1-10",
    fixes=(
        Fix("scale-to-unit", "divide the pixels by 255 (inputs in [0, 1])"),
        Fix("standardise", "subtract the training mean and divide by the training std, per feature"),
        Fix("input-normalisation-layer", "a normalisation layer at the input: nn.BatchNorm1d / keras.layers."
            "Normalization adapted to the training data"),
        Fix("lower-lr", "lower the learning rate until it stops going NaN (1e-6): finite, but the badly "
            "conditioned problem barely learns", hides_problem=True),
    ),
    frameworks=("torch", "tensorflow"),
    steps=200,
    score_name="held-out R²",
    pass_score=0.8,
    sources=(
        "digest of NaN causes (zh), answers 1.1 and 7.1: normalise the input (subtract the mean, divide by the "
        "std; divide images by 255), or add normalisation layers",
        "digest of NaN causes (zh), answer 6.1: lower the learning rate until the NaN disappears",
    ),
    package=__name__,
)


def make_data(seed: int) -> Dataset:
    """4x4 images of integer pixels in 0..255; the target is a noisy linear read-out of the scaled pixels
    (standardised, so its own scale is not the problem)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(NUM_SAMPLES, NUM_FEATURES)).astype(np.float32)
    weights = rng.normal(size=NUM_FEATURES) / np.sqrt(NUM_FEATURES)
    y = 4.0 * (pixels / PIXEL_MAX - 0.5) @ weights + 0.1 * rng.normal(size=NUM_SAMPLES)
    y = ((y - y.mean()) / y.std()).astype(np.float32)[:, None]
    num_eval = NUM_SAMPLES // 4
    return Dataset(pixels[num_eval:], y[num_eval:], pixels[:num_eval], y[:num_eval])


def scale_to_unit(data: Dataset) -> Dataset:
    return Dataset(data.x_train / PIXEL_MAX, data.y_train, data.x_eval / PIXEL_MAX, data.y_eval)


def standardise(data: Dataset) -> Dataset:
    """Per-feature standardisation with the training set's statistics (the held-out set uses the same ones)."""
    mean, std = data.x_train.mean(axis=0), data.x_train.std(axis=0)
    return Dataset((data.x_train - mean) / std, data.y_train, (data.x_eval - mean) / std, data.y_eval)
