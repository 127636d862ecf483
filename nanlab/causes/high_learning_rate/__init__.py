"""High learning rate: each SGD step overshoots the minimum by more than it corrects, so weights, logits and
gradients grow geometrically until float32 overflows to Inf and Inf - Inf gives NaN."""
from nanlab.data import Dataset, make_blobs
from nanlab.registry import Cause, Fix

NUM_CLASSES = 4
NUM_FEATURES = 20
HIDDEN_UNITS = 128
BATCH_SIZE = 64
BROKEN_LR = 5.0  # plain SGD at this rate blows the 3-layer MLP up within ~10 steps
SANE_LR = 0.1
MAX_GRAD_NORM = 0.25
WARMUP_STEPS = 20  # the warmup section: BROKEN_LR reached linearly over 20 steps, then cosine decay

CAUSE = Cause(
    id="high-learning-rate",
    number=1,
    title="Learning rate too high",
    mechanism="each step overshoots, so weights and gradients grow geometrically until float32 overflows",
    when="early: within the first ~100 steps, after a few steps of fast-rising loss",
    symptom="loss and gradient norm climb by orders of magnitude per step, then Inf, then NaN",
    fixes=(
        Fix("lower-lr", "a sane learning rate (0.1)"),
        Fix("clip-grad-norm", "the same high rate, gradients clipped to global norm 0.25"),
        Fix("lr-finder", "an LR range test picks the rate"),
    ),
    frameworks=("torch", "tensorflow"),
    steps=60,
    score_name="held-out accuracy",
    pass_score=0.8,
    sources=(
        "digest of NaN causes (Chinese, item 1): NaN within the first 100 iterations usually means the learning "
        "rate is too high; lower it until the NaN goes",
        "Smith, 2017, 'Cyclical Learning Rates for Training Neural Networks' (the LR range test)",
    ),
    asides=(Fix("warmup", "a linear warmup to the broken rate, then cosine decay: the NaN only comes later",
                hides_problem=True, still_nonfinite=True),),
    package=__name__,
)


def make_data(seed: int) -> Dataset:
    """Four Gaussian classes in 20 standardised features; a small MLP reaches ~95% held-out accuracy."""
    return make_blobs(seed, NUM_CLASSES, NUM_FEATURES, num_samples=1024, spread=1.0)
