"""Bad initialisation: a deep plain ReLU network whose weights are drawn from N(0, 1).

A linear layer with ``fan_in`` inputs and N(0, 1) weights multiplies the size of its input by about
``sqrt(fan_in / 2)`` after the ReLU (5.7 for 64 units), so 20 such layers make the logits ~1e15 before training
starts. The first loss is ~1e15 and so is the first gradient; one SGD step moves the weights by ~1e12 and the next
forward pass overflows float32. He initialisation (variance 2 / fan_in) keeps the factor at 1; batch normalisation
after each linear layer rescales every layer's output to unit size whatever the weights. The vanishing twin:
N(0, 0.01) weights divide the signal by ~18 per layer, the logits are ~1e-25 and nothing learns.
"""
from nanlab.data import Dataset, make_blobs
from nanlab.registry import Cause, Fix

NUM_CLASSES = 4
NUM_FEATURES = 20
DEPTH = 20  # hidden ReLU layers
WIDTH = 64
BATCH_SIZE = 32
NUM_SAMPLES = 640
LR = 0.003  # SGD with momentum 0.9
MOMENTUM = 0.9
# Batch norm makes each layer blind to the scale of its weights, so a step moves a weight row's direction by
# ~lr / |row|^2: N(0, 1) rows of 64 weights have |row|^2 ~ 64, hence a rate ~30x larger to learn as fast.
BATCH_NORM_LR = 0.1
BAD_STD = 1.0
SMALL_STD = 0.01  # the vanishing twin, and the "truncated_normal(0, 0.01)" advice for a deep net

CAUSE = Cause(
    id="bad-initialisation",
    number=9,
    title="Bad initialisation of a deep plain network (N(0, 1) weights)",
    mechanism="each ReLU layer with N(0, 1) weights multiplies the signal by ~sqrt(fan_in / 2) (5.7 for 64 "
              "units): 20 layers make the logits, the first loss and the first gradient ~1e15 at initialisation, "
              "so the first SGD step moves the weights by ~1e12 and the next forward pass overflows float32",
    when="at the second step (step 1) in every seed checked: the first loss is already ~1e15, before any update",
    symptom="a first loss of ~1e15 (or inf/NaN at step 0 in a deeper or wider net), then a non-finite forward "
            "pass at step 1; no history of growth; the activations grow by a constant factor per layer",
    fixes=(
        Fix("he-init", "He (Kaiming) initialisation for ReLU layers: N(0, 2 / fan_in)"),
        Fix("batch-norm", "keep the N(0, 1) weights, add batch normalisation after each linear layer (at a larger "
            "rate, 0.1: normalised layers ignore the weights' scale, so too-large weights learn slowly)"),
        Fix("small-init", "shrink the weights to N(0, 0.01): finite, but the signal vanishes (~1e-25 at the "
            "output) and nothing learns", hides_problem=True),
    ),
    frameworks=("torch", "tensorflow"),
    steps=80,
    score_name="held-out accuracy",
    pass_score=0.8,
    sources=(
        "digest of NaN causes (zh), answer 1.2: change the initialisation (xavier or msra/He for CNNs)",
        "digest of NaN causes (zh), answers 7.2 and 7.3: batch normalisation at every layer of a deep net; "
        "weights from truncated_normal(0, 0.01)",
        "He et al. 2015, Delving Deep into Rectifiers (arXiv:1502.01852): variance 2 / fan_in keeps ReLU "
        "activations at a constant scale",
        "Ioffe and Szegedy 2015, Batch Normalization (arXiv:1502.03167)",
    ),
    package=__name__,
)


def make_data(seed: int) -> Dataset:
    """Four well-separated Gaussian classes in 20 standardised features: the depth, not the data, is the test."""
    return make_blobs(seed, NUM_CLASSES, NUM_FEATURES, num_samples=NUM_SAMPLES, spread=3.0)
