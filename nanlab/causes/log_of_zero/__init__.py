"""Log of zero: a hand-written cross-entropy ``-(y * log(softmax(z)))`` on a confident model.

Once a logit trails the largest one by more than ~104 (float32; ~87 where denormals are flushed to zero, as
TensorFlow does on CPU), its softmax probability rounds to exactly 0.0. ``log(0) = -inf`` and the one-hot zero
in front of it gives ``0 * -inf = NaN``; the gradient of ``log`` at 0 is ``0 / 0 = NaN`` too.
"""
import numpy as np

from nanlab.data import Dataset, make_blobs
from nanlab.registry import Cause, Fix

NUM_CLASSES = 4
NUM_FEATURES = 20
HIDDEN_UNITS = 128
BATCH_SIZE = 64
LR = 0.1  # Adam: a brisk rate that keeps growing the logits of an already-confident model
EPS = 1e-8  # the add-eps fix: log(p + EPS)
MIN_PROB = 1e-7  # the clip-input fix: log(clip(p, MIN_PROB, 1)); Keras's own epsilon
LOG_FLOOR = -100.0  # the wrong fix: clip(log(p), LOG_FLOOR, 0), the floor torch's BCELoss uses
# Log of a negative number (a section of the notebooks, not the broken setting): a count model whose head outputs
# the Poisson rate itself, trained with the hand-written Poisson loss rate - y * log(rate).
COUNT_FEATURES = 8
COUNT_HIDDEN_UNITS = 32
COUNT_LR = 0.01  # Adam; a sample's predicted rate crosses below 0 within ~20 steps

CAUSE = Cause(
    id="log-of-zero",
    number=2,
    title="Log of zero in a hand-written cross-entropy",
    mechanism="in a confident model a wrong class's softmax probability underflows to exactly 0.0 in float32 (a "
              "logit gap past ~104, or ~87 where denormals are flushed, as on TensorFlow's CPU); log(0) = -inf and "
              "the one-hot 0 in front of it makes 0 * -inf = NaN",
    when="once the model is confident, after the loss has already fallen well below its start (here within ~10 "
         "brisk Adam steps; in real runs often after many epochs) and the logits keep growing; only hand-written "
         "log(softmax), log(sigmoid) or log(1 - p) code is exposed",
    symptom="a healthy, falling loss turns NaN in a single step, with no growth of loss or gradient norm before "
            "it; some softmax probability in that batch is exactly 0.0",
    fixes=(
        Fix("fused-loss", "the framework's loss on logits: F.cross_entropy / from_logits=True (log-softmax inside)"),
        Fix("clip-input", "clip the input of log: log(clip(p, 1e-7, 1))"),
        Fix("add-eps", "a small epsilon inside log: log(p + 1e-8)"),
        Fix("clip-log-output", "clip the output of log: clip(log(p), -100, 0); the loss looks finite but the "
            "gradient of log at p = 0 is still 0/0 = NaN", hides_problem=True, still_nonfinite=True),
        Fix("float64", "the same loss in float64: the underflow only moves from a logit gap of ~104 to ~745",
            hides_problem=True, still_nonfinite=True),
    ),
    frameworks=("torch", "tensorflow"),
    steps=200,
    score_name="held-out accuracy",
    pass_score=0.8,
    sources=(
        "Stack Overflow 'Tensorflow NaN bug?': -reduce_sum(y_ * log(y_conv)) gives NaN once y_conv has an exact 0; "
        "the answers clip the input of log (tf.clip_by_value(y_conv, 1e-10, 1.0)) or use the fused loss",
        "Stack Overflow 'Deep-Learning Nan loss reasons': log of zero in a hand-written loss",
        "PyTorch docs, nn.BCELoss: 'clamps its log function outputs to be greater than or equal to -100'",
    ),
    package=__name__,
)


def make_data(seed: int) -> Dataset:
    """Four Gaussian classes in 20 standardised features; an MLP separates the training set and gets confident."""
    return make_blobs(seed, NUM_CLASSES, NUM_FEATURES, num_samples=1024, spread=1.0)


def make_counts(seed: int, num_samples: int = 1024, eval_fraction: float = 0.25) -> Dataset:
    """Poisson counts whose log-rate is linear in 8 standard-normal features (mean count ~3): ``y`` is float32."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_samples, COUNT_FEATURES)).astype(np.float32)
    log_rate = 0.3 * x @ rng.normal(size=COUNT_FEATURES) + 1.0
    y = rng.poisson(np.exp(log_rate)).astype(np.float32)
    num_eval = int(num_samples * eval_fraction)
    return Dataset(x[num_eval:], y[num_eval:], x[:num_eval], y[:num_eval])
