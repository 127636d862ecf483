"""float8 range: values past a float8 format's largest finite value, cast without a per-tensor scale.

The two float8 formats of training (OCP FP8, NVIDIA Hopper) trade range for precision: e4m3fn stops at 448 and has
no inf, e5m2 stops at 57344 and has inf. Real float8 training never casts a tensor as it is: it multiplies it by a
per-tensor scale first (``fp8_max / amax``, the tensor's largest magnitude; Transformer Engine keeps a history of
amaxes, torchao computes it per step) and divides the product by the scales afterwards. Without the scale:

- e5m2 overflows: a value past 57344 (61440 and up round to inf) becomes inf, and the matmul that follows gives inf
  or NaN: the loss is non-finite;
- e4m3fn is silent in torch: its cast *saturates*, every value past 448 (inf included) becomes 448, and nothing is
  non-finite, the model just loses every large input (measured: torch 2.13 casts 500, 1e6 and inf to 448). TensorFlow
  2.21's cast (ml_dtypes) does not saturate: 500 becomes NaN, since e4m3fn has no inf.

The recipe's data are raw counts (25000 + 15000 z for well-separated standardised class clusters z: 94% past
448, about 3 in 1000 past 61440), fed
to a hand-written float8 linear layer (the input cast to float8, the weight to e4m3fn, the product computed in
float32 from the float8 values, as one emulates float8 on a CPU), then a LayerNorm, ReLU and a linear head. The input
in e5m2 without a scale: NaN at step 0. Saturating (e4m3fn in torch, or clipping to 448 before the cast) keeps it
finite and destroys the inputs: the run never learns. A per-tensor scale learns.
"""
import numpy as np

from nanlab.data import Dataset, make_blobs
from nanlab.registry import Cause, Fix

NUM_CLASSES = 4
NUM_FEATURES = 20
HIDDEN_UNITS = 32
BATCH_SIZE = 32
LR = 1e-2  # Adam
OFFSET = 25000.0  # counts: the level every sensor reads around
SPREAD = 15000.0  # counts per standard deviation of the standardised class clusters
E4M3_MAX = 448.0
E5M2_MAX = 57344.0
E5M2_INF_FROM = 61440.0  # the smallest magnitude e5m2's round-to-nearest turns into inf

CAUSE = Cause(
    id="float8-range",
    number=21,
    title="float8 range: e4m3 saturates at 448, e5m2 overflows past 57344",
    mechanism="a tensor cast to float8 without a per-tensor scale keeps only what fits the format: e5m2 turns "
              "values past 57344 into inf (and the matmul after it gives inf or NaN), e4m3fn has no inf, so "
              "torch's cast saturates every value past 448 to 448 (silently wrong, never non-finite) while "
              "TensorFlow's turns it into NaN",
    when="training or running a model in float8 (a hand-rolled float8 layer, an emulation on the CPU, a float8 "
         "recipe with its scaling turned off) when a tensor's magnitudes pass the format's range: raw-unit inputs, "
         "activations of a few hundred (past e4m3's 448), gradients under a large loss scale",
    symptom="the loss is NaN from the first step in e5m2 while the same layer in float32 learns; the first "
            "non-finite value is the cast to float8 itself (inf from finite values past 57344); in e4m3fn under "
            "torch nothing is ever non-finite and the model does not learn",
    fixes=(
        Fix("per-tensor-scaling", "scale each tensor into the format before the cast, scale = fp8_max / amax "
            "(its largest magnitude, per step), cast, and divide the product by the scales (Transformer Engine's "
            "and torchao's recipe); here in e4m3fn, the format of forward tensors"),
        Fix("saturate", "clip to the format's largest value before the cast (what torch's e4m3fn cast does by "
            "itself): nothing overflows, and every count past 448 is read as 448", hides_problem=True),
    ),
    frameworks=("torch", "tensorflow"),
    steps=30,
    score_name="held-out accuracy",
    pass_score=0.8,
    sources=(
        "Micikevicius et al. 2022, FP8 Formats for Deep Learning: e4m3 (max 448, no inf) and e5m2 (max 57344, "
        "with inf), per-tensor scaling factors (https://arxiv.org/abs/2209.05433)",
        "NVIDIA Transformer Engine docs, Using FP8: the delayed-scaling recipe, scale from the amax history, e4m3 "
        "forward and e5m2 backward in the HYBRID format (https://docs.nvidia.com/deeplearning/transformer-engine/"
        "user-guide/examples/fp8_primer.html)",
        "pytorch/ao, torchao.float8: Float8Linear with dynamic per-tensor scaling, scale = fp8_max / amax "
        "(https://github.com/pytorch/ao/tree/main/torchao/float8)",
        "PyTorch docs, torch.float8_e4m3fn and torch.float8_e5m2: a cast to e4m3fn saturates (measured here with "
        "torch 2.13); ml_dtypes (TensorFlow's float8) turns out-of-range e4m3fn values into NaN",
    ),
    package=__name__,
)


def make_data(seed: int) -> Dataset:
    """Four classes of 20 raw counts, ``OFFSET + SPREAD * z`` for standardised class clusters ``z``: 94% of the
    counts are past e4m3's 448 and about 3 in 1000 past e5m2's 61440, where the cast gives inf (one or two in a
    batch of 32 x 20)."""
    data = make_blobs(seed, NUM_CLASSES, NUM_FEATURES, num_samples=1024, spread=2.0)
    raw = lambda z: (OFFSET + SPREAD * z).astype(np.float32)  # noqa: E731
    return Dataset(raw(data.x_train), data.y_train, raw(data.x_eval), data.y_eval)
