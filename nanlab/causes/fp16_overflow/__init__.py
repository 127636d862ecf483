"""fp16 overflow: under float16 autocast an activation passes 65504, float16's largest finite value, and becomes inf.

The recipe's features are logged in raw instrument units (up to ~1e5); a LayerNorm right after the first layer
makes float32 training indifferent to that scale. Under float16 autocast the first layer casts its input to float16,
where every batch holds values past 65504: inf, then inf and NaN out of the layer, at every step. The loss scaler
only scales the *backward* pass, so it skips every step and halves its scale each time (65536 -> 5.7e-14 in 60
steps); a larger loss scale changes nothing.
"""
from nanlab.data import Dataset, make_blobs
from nanlab.registry import Cause, Fix

NUM_CLASSES = 4
NUM_FEATURES = 20
HIDDEN_UNITS = 32
BATCH_SIZE = 32
LR = 1e-2  # Adam
RAW_SCALE = 3e4  # the features' spread in raw units: a few standard deviations pass float16's 65504
FLOAT16_MAX = 65504.0
RAISED_LOSS_SCALE = 2.0 ** 24  # the wrong fix: 256x the scaler's default initial scale of 2**16

CAUSE = Cause(
    id="fp16-overflow",
    number=14,
    title="float16 overflow under mixed precision",
    mechanism="float16's largest finite value is 65504; under float16 autocast an activation past it becomes inf "
              "(here the raw-unit input, up to ~1e5, which autocast casts to float16 for the first layer), and "
              "inf - inf makes NaN; the loss scaler scales only the backward pass, so it skips every step",
    when="from the first step under float16 autocast, when some activation is larger than 65504 (raw-unit "
         "inputs, activations that grew during training, a sum or a square of large values); float32 and "
         "bfloat16 runs of the same model are fine",
    symptom="the loss is NaN or inf at every step while the float32 run of the same model learns; with a "
            "GradScaler every step is skipped and the loss scale halves each step (65536 -> 5.7e-14 in 60 steps)",
    fixes=(
        Fix("bfloat16", "autocast to bfloat16: float32's range (3.4e38) with fewer mantissa bits; no scaler"),
        Fix("float32-layer", "keep the overflowing layer in float32 (autocast disabled around it)"),
        Fix("rescale-input", "rescale the pre-activation: divide the raw-unit input by its scale before the "
            "first layer"),
        Fix("raise-loss-scale", "a 256x larger initial loss scale (2**24): the overflow is in the forward pass, "
            "which the loss scale never touches", hides_problem=True, still_nonfinite=True),
    ),
    frameworks=("torch", "tensorflow"),
    steps=25,
    score_name="held-out accuracy",
    pass_score=0.8,
    sources=(
        "PyTorch docs, Automatic Mixed Precision (torch.amp): autocast and GradScaler; a skipped step halves "
        "the scale (https://pytorch.org/docs/stable/amp.html)",
        "Keras guide, Mixed precision: mixed_float16 and LossScaleOptimizer "
        "(https://keras.io/api/mixed_precision/)",
        "Micikevicius et al., 2018, 'Mixed Precision Training' (https://arxiv.org/abs/1710.03740)",
    ),
    package=__name__,
)


def make_data(seed: int) -> Dataset:
    """Four Gaussian classes in 20 features logged in raw units: standardised blobs times ``RAW_SCALE``."""
    data = make_blobs(seed, NUM_CLASSES, NUM_FEATURES, num_samples=1024, spread=1.0)
    return Dataset(data.x_train * RAW_SCALE, data.y_train, data.x_eval * RAW_SCALE, data.y_eval)
