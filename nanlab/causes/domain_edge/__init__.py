"""Domain edge: ``acos`` of a cosine that rounds to 1 (an angular-margin loss, ArcFace-style).

``acos``, ``asin`` and ``atanh`` are defined on [-1, 1] only. A cosine computed in float32 from two nearly parallel
unit vectors rounds to exactly 1.0 when their angle is below about 2.4e-4 rad, and often one ulp above it
(1.0000001): ``acos(1.0000001)`` is NaN in the forward pass, and at exactly +-1 the value is finite while the
derivative ``-1 / sqrt(1 - x**2)`` is -inf (``asin`` the same; ``atanh(+-1)`` is +-inf itself). An ArcFace head
computes ``cos(acos(cosine) + margin)`` for the target class; training pulls each embedding onto its class weight
(cosine 1) and away from the others (cosine -1 for the opposite class), so sooner or later one cosine of a batch
lands on the edge.

The recipe is the classic 2-D feature toy of the angular-margin papers (LeNet++ features, drawn on the circle): an
MLP to a 2-D embedding, class weights initialised evenly around the circle, s = 30, m = 0.5, Adam. In 2-D a
cosine reaches +-1 by rounding at a rate of a few per cent of the steps once the classes have formed; in a
512-D face model the same event needs a collapsed or duplicated embedding or a longer run, and comes as a NaN
"after thousands of iterations". The standard fixes clamp the cosine to [-1 + eps, 1 - eps] before ``acos`` or
write cos(theta + m) without ``acos``; clamping to exactly [-1, 1] keeps the forward finite and the gradient at
exactly +-1 infinite.
"""
import math

import numpy as np

from nanlab.data import Dataset, make_blobs
from nanlab.registry import Cause, Fix

NUM_CLASSES = 4
NUM_FEATURES = 20
HIDDEN_UNITS = 64
EMBEDDING_DIM = 2  # features on the circle, as in the angular-margin papers' figures
BATCH_SIZE = 64
LR = 0.02  # Adam
SPREAD = 1.5  # distance between the class centres, in units of the noise
SCALE = 30.0  # s: the logits are s * cos(theta), s * cos(theta + m) for the target class
MARGIN = 0.5  # m, in radians: ArcFace's default
# Past theta = pi - m, cos(theta + m) grows again with theta: ArcFace implementations switch to cos(theta) - m sin(m)
# there, the value cos(theta + m) has at theta = pi - m continued along the cosine.
THRESHOLD = math.cos(math.pi - MARGIN)
BELOW_THRESHOLD = math.sin(math.pi - MARGIN) * MARGIN
EPS = 1e-7  # the clamp-eps fix: the cosine kept in [-1 + 1e-7, 1 - 1e-7] (float32: 1 - 1.19e-7, the last value < 1)

CAUSE = Cause(
    id="domain-edge",
    number=17,
    title="Domain edge: acos of a cosine that rounds to 1 (angular-margin losses)",
    mechanism="acos, asin and atanh are finite only on [-1, 1]: a cosine of nearly parallel unit vectors rounds to "
              "exactly 1.0 (within 2.4e-4 rad in float32) or an ulp above it; acos(1.0000001) is NaN in the forward "
              "pass, and at exactly +-1 the derivative -1 / sqrt(1 - x**2) is -inf (atanh(+-1) = +-inf)",
    when="in an angular-margin loss (ArcFace, SphereFace), a geodesic distance acos(a . b) or an angle between two "
         "vectors, once training aligns an embedding with its class weight (or opposes it to another) or a pair of "
         "identical vectors (a duplicated record) reaches it; the step is a rounding coincidence, often after "
         "training has gone well",
    symptom="the loss is NaN (the cosine rounded above 1), or the loss is finite and the gradient inf/NaN (the "
            "cosine was exactly +-1), at a seed-dependent step; the failing op is acos, its input's largest "
            "magnitude is 1 or just above",
    fixes=(
        Fix("clamp-eps", "clamp the cosine to [-1 + 1e-7, 1 - 1e-7] before acos: finite value and derivative "
            "(about 2e3 at the clamp)"),
        Fix("no-acos", "no acos: cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m), with sin(theta) = "
            "sqrt(max(1 - cos(theta)**2, 1e-7))"),
        Fix("clamp-unit", "clamp the cosine to exactly [-1, 1]: the forward is finite, but at a cosine of exactly "
            "+-1 acos's derivative is still -inf", hides_problem=True, still_nonfinite=True),
    ),
    frameworks=("torch", "tensorflow"),
    steps=100,
    score_name="held-out accuracy",
    pass_score=0.9,
    sources=(
        "Deng et al., 'ArcFace: Additive Angular Margin Loss for Deep Face Recognition', CVPR 2019 "
        "(arXiv:1801.07698): the logit s * cos(theta + m), theta = arccos of the normalised feature and weight",
        "pytorch/pytorch#8069, 'About Nan error using acos() function': clamp(min=-1, max=1) still gave NaN "
        "gradients; clamping to [-1 + eps, 1 - eps] with eps = 1e-7 fixed it",
        "pytorch/pytorch#18057 and #78064: F.cosine_similarity of a vector with itself returns 1.0000001",
        "ronghuaiyang/arcface-pytorch#68: 'when cosine(theta) == 1 the loss would become NaN'; clamp the cosine "
        "to [-1 + eps, 1 - eps]; MccreeZhao/FR-Loss-on-Mnist#2: ArcFace on MNIST's 2-D LeNet++ features goes NaN "
        "because 'input and weight directions become almost identical'",
        "ronghuaiyang/arcface-pytorch#91, ZhaoJ9014/face.evoLVe#117 and ktjonsson/keras-ArcFace#2: the acos-free "
        "form needs its sqrt(1 - cos**2) kept above 0 (clipped at 1e-6, 1e-9 or K.epsilon()), or the square root's "
        "derivative is inf",
        "PyTorch docs, torch.acos; TensorFlow docs, tf.math.acos: defined on [-1, 1]",
    ),
    package=__name__,
)


def make_data(seed: int) -> Dataset:
    """Four Gaussian classes in 20 standardised features (class centres 1.5 noise units apart)."""
    return make_blobs(seed, NUM_CLASSES, NUM_FEATURES, num_samples=1024, spread=SPREAD)


def class_directions() -> np.ndarray:
    """The class weights' initial value: unit vectors evenly spaced around the circle, ``(classes, 2)`` float32.

    With random directions, two classes that start close can stay merged in a 2-D embedding (ArcFace's pull and
    push balance there); spaced evenly, every seed learns the four classes.
    """
    angles = np.arange(NUM_CLASSES) * 2 * np.pi / NUM_CLASSES
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
