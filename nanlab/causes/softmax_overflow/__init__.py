"""Softmax overflow: a hand-written ``exp(z) / sum(exp(z))`` on logits that grow past ~88.7.

``exp`` of a float32 above ``log(3.4e38) = 88.72`` is ``inf``; the softmax then divides ``inf`` by ``inf``
(NaN) for the leading class and a finite number by ``inf`` (0) for the others, and the cross-entropy of either
is non-finite. The framework's softmax (and log-softmax) subtracts the largest logit first, so that the largest
exponent is ``exp(0) = 1``.
"""
from nanlab.data import Dataset, make_blobs
from nanlab.registry import Cause, Fix

NUM_CLASSES = 4
NUM_FEATURES = 20
HIDDEN_UNITS = 128
BATCH_SIZE = 64
LR = 0.1  # Adam: a brisk rate that keeps growing the logits of a model that is already right
LOGIT_LIMIT = 1.0  # the clip-logits patch: logits in [-1, 1], so that exp can never overflow
EXP_OVERFLOW = 88.72  # log(float32 max = 3.4e38): exp of anything larger is inf

CAUSE = Cause(
    id="softmax-overflow",
    number=10,
    title="Softmax overflow in a hand-written exp(z) / sum(exp(z))",
    mechanism="exp of a float32 logit above 88.72 is inf; the hand-written softmax then computes inf / inf = NaN "
              "for the leading class and x / inf = 0 for the others, so the cross-entropy is NaN or inf",
    when="once the model is confident and its largest logit passes ~88.7 (here within ~20 brisk Adam steps; in "
         "real runs after the loss has long been small), or from the first step with unscaled inputs or a large "
         "temperature; only hand-written softmax, sigmoid or logsumexp code is exposed",
    symptom="a healthy, falling loss turns NaN or inf in one step; the forward pass has an inf right after exp "
            "while every logit is finite",
    fixes=(
        Fix("subtract-max", "subtract each row's largest logit before exp, and take log-probabilities as "
            "s - log(sum(exp(s))) of the shifted logits s: exp never overflows and the log never sees 0"),
        Fix("log-softmax", "log-probabilities as z - logsumexp(z) (torch.logsumexp / tf.reduce_logsumexp)"),
        Fix("fused-loss", "the framework's cross-entropy on logits (F.cross_entropy / from_logits=True)"),
        Fix("clip-logits", "clip the logits to [-1, 1] so that exp cannot overflow: finite, and it learns the "
            "classes, but no probability can pass e / (e + 3 / e) = 0.71 (a loss floor of 0.34) and the clip "
            "passes no gradient to the logits it caught", hides_problem=True, learns_anyway=True),
    ),
    frameworks=("torch", "tensorflow"),
    steps=100,
    score_name="held-out accuracy",
    pass_score=0.8,
    sources=(
        "digest of NaN causes (Chinese, item 6): a softmax without special handling computes exp(x) in numerator "
        "and denominator; values that are too large give INF/INF = NaN; make sure your softmax subtracts the "
        "maximum",
        "PyTorch docs, torch.nn.functional.log_softmax: 'mathematically equivalent to log(softmax(x)), but doing "
        "these two operations separately is slower and numerically unstable'",
        "TensorFlow docs, tf.math.reduce_logsumexp: 'more numerically stable than log(sum(exp(input)))'",
    ),
    package=__name__,
)


def make_data(seed: int) -> Dataset:
    """Four Gaussian classes in 20 standardised features; an MLP separates them and gets confident."""
    return make_blobs(seed, NUM_CLASSES, NUM_FEATURES, num_samples=1024, spread=1.0)
