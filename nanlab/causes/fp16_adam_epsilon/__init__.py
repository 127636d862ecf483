"""Adam's epsilon in float16: ``eps=1e-8`` rounds to 0.0 (float16's smallest positive value is 6e-8).

Adam divides by ``sqrt(v) + eps``. In a model whose weights (and so Adam's state) are float16, ``v = (1 - beta2)
* g**2`` underflows to 0 for every gradient smaller than about 8e-3, and with ``eps == 0`` the update is
``m / 0 = +-inf``, or ``0 / 0 = NaN`` where the gradient is 0 too. One step and the weights are non-finite.
"""
from nanlab.data import Dataset, make_blobs
from nanlab.registry import Cause, Fix

NUM_CLASSES = 4
NUM_FEATURES = 20
HIDDEN_UNITS = 32
BATCH_SIZE = 32
LR = 1e-2
BROKEN_EPS = 1e-8  # PyTorch's default; 0.0 in float16
SAFE_EPS = 1e-4  # representable in float16 (1.0002e-4), and large enough that m / eps stays finite

CAUSE = Cause(
    id="fp16-adam-epsilon",
    number=15,
    title="Adam's epsilon vanishes in float16",
    mechanism="Adam divides by sqrt(v) + eps; in float16 eps = 1e-8 rounds to 0.0 and v = (1 - beta2) * g**2 "
              "underflows to 0 for small gradients, so the update is m / 0 = +-inf (0 / 0 = NaN where the "
              "gradient is 0)",
    when="at the first optimizer step of a model whose parameters, and so Adam's state, are float16 (model.half(), "
         "Keras dtype='float16'); not under AMP or Keras' mixed policy, whose variables stay float32",
    symptom="loss and gradients finite at step 0, every loss NaN from step 1: the first update wrote inf and NaN "
            "into the weights",
    fixes=(
        Fix("larger-eps", "Adam with eps = 1e-4, a value float16 can hold"),
        Fix("float32-master-weights", "float32 parameters and optimizer state, float16 compute (PyTorch AMP; "
            "Keras' mixed_float16 policy)"),
    ),
    frameworks=("torch", "tensorflow"),
    steps=40,
    score_name="held-out accuracy",
    pass_score=0.8,
    sources=(
        "PyTorch docs, torch.optim.Adam (eps=1e-8) (https://pytorch.org/docs/stable/generated/torch.optim.Adam.html)",
        "Keras guide, Mixed precision: variables stay float32 under mixed_float16 "
        "(https://keras.io/api/mixed_precision/)",
        "Micikevicius et al., 2018, 'Mixed Precision Training': a float32 master copy of the weights "
        "(https://arxiv.org/abs/1710.03740)",
    ),
    asides=(Fix("keras-default-eps", "Keras' default epsilon 1e-7 (1.19e-7 in float16) on a float16 model: "
                "finite, but small gradients get updates hundreds of learning rates long and it does not learn",
                hides_problem=True),),
    package=__name__,
)


def make_data(seed: int) -> Dataset:
    """Four Gaussian classes in 20 standardised features."""
    return make_blobs(seed, NUM_CLASSES, NUM_FEATURES, num_samples=1024, spread=1.0)
