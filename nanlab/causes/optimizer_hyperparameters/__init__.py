"""Optimizer hyperparameters that make the update itself diverge, whatever the data and the model.

Three settings, each of which makes some quantity of the update grow geometrically:

- **decoupled weight decay with lr * weight_decay > 2** (the broken setting): AdamW (PyTorch's ``AdamW``, and every
  Keras optimizer given ``weight_decay``) multiplies each weight by ``1 - lr * weight_decay`` per step before its
  Adam step. At ``lr = 3e-3`` and ``weight_decay = 1000`` (fastai#1806: "try 1000, it will go nan in one epoch")
  that factor is -2: every weight flips sign and doubles each step, ``|1 - lr * wd|^t = 2^t``, until the logits
  overflow float32 (step ~42 here, where three layers' weights multiply). Between 1 and 2 the weights flip sign
  and shrink (a model that cannot learn, but no NaN); at 1 they are zeroed each step.
- **momentum >= 1**: the velocity ``v = momentum * v + g`` never decays; at 1 it is the sum of every past gradient,
  above 1 the old gradients weigh more each step (``momentum^t``). PyTorch's SGD accepts any momentum >= 0; Keras'
  refuses one above 1 and accepts 1.0.
- **a learning-rate schedule whose rate keeps growing**: a hand-written linear warmup with no end
  (``(step + 1) / warmup``, the ``min(1, ...)`` forgotten) passes every stable rate and keeps going.

Gradient clipping does not help the first: the decay term ``lr * wd * w`` is applied to the weights directly, never
through the gradient that clipping scales. The fixes are sane values: a weight decay of 1e-2, momentum 0.9, a
schedule that warms up and then decays.

The schedule variant is named from the learning rate of every healthy step, which the watch records
(``report.learning_rates``), with ``high-learning-rate`` (the gradient norm's growth) as the runner-up.
"""
from nanlab.data import Dataset, make_blobs
from nanlab.registry import Cause, Fix

NUM_CLASSES = 4
NUM_FEATURES = 20
HIDDEN_UNITS = 64
BATCH_SIZE = 32
LR = 3e-3  # AdamW at a usual learning rate
BROKEN_WEIGHT_DECAY = 1000.0  # lr * wd = 3: each weight times 1 - 3 = -2 per step
SANE_WEIGHT_DECAY = 1e-2  # PyTorch AdamW's default: lr * wd = 3e-5 per step
MAX_GRAD_NORM = 1.0  # the wrong fix: gradients clipped to global norm 1
SGD_LR = 0.05  # the momentum variant and its fix: SGD at this rate
BROKEN_MOMENTUM = 1.05  # PyTorch accepts it; Keras refuses momentum > 1
EDGE_MOMENTUM = 1.0  # accepted by both: the velocity is the sum of every past gradient
SANE_MOMENTUM = 0.9
PEAK_LR = 0.1  # the schedule variant and its fix: SGD with momentum 0.9, warmed up to this rate over WARMUP_STEPS
WARMUP_STEPS = 5

CAUSE = Cause(
    id="optimizer-hyperparameters",
    number=18,
    title="Optimizer hyperparameters that diverge: weight decay x learning rate, momentum >= 1, a growing schedule",
    mechanism="the update itself grows geometrically: decoupled weight decay multiplies each weight by "
              "1 - lr * weight_decay per step (lr * wd = 3: x(-2) per step, 2^t); momentum >= 1 never lets the "
              "velocity decay (momentum^t); a schedule whose rate keeps growing passes every stable rate",
    when="from the first step the weights (or the velocity, or the rate) grow by a constant factor per step; the NaN "
         "follows when a product of them overflows float32 (step ~42 for lr * wd = 3 in a three-layer MLP)",
    symptom="the loss climbs steadily from the first steps while the weight norm grows by the same factor every "
            "step (x2 per step for lr * wd = 3), then inf, then NaN; gradient clipping changes nothing",
    fixes=(
        Fix("sane-weight-decay", "AdamW with weight_decay = 1e-2 (lr * wd = 3e-5 per step), not 1000"),
        Fix("momentum-below-one", "the momentum variant's fix: SGD with momentum 0.9, not 1.05"),
        Fix("decaying-schedule", "the schedule variant's fix: a linear warmup to 0.1 that ends, then cosine decay "
            "(the framework's own schedulers), not a warmup without end"),
        Fix("clip-grad-norm", "AdamW with weight_decay = 1000 and gradients clipped to global norm 1: the decay "
            "term never goes through the gradient, so the weights still double every step",
            hides_problem=True, still_nonfinite=True),
    ),
    frameworks=("torch", "tensorflow"),
    steps=100,
    score_name="held-out accuracy",
    pass_score=0.8,
    sources=(
        "fastai/fastai#1806, 'Huge weight decay rate makes no difference' "
        "(https://github.com/fastai/fastai/issues/1806): 'Try 1000, it will go nan in one epoch'",
        "Loshchilov & Hutter, 2019, 'Decoupled Weight Decay Regularization' (https://arxiv.org/abs/1711.05101): "
        "the decay multiplies the weights directly, outside the gradient",
        "PyTorch docs, torch.optim.AdamW (https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html): "
        "theta <- theta - gamma * lambda * theta, then the Adam step",
        "Keras docs, optimizers (https://keras.io/api/optimizers/): weight_decay on every optimizer; SGD's "
        "momentum 'float hyperparameter >= 0'",
        "PyTorch docs, torch.optim.SGD (https://pytorch.org/docs/stable/generated/torch.optim.SGD.html): "
        "b_t = mu * b_(t-1) + g_t",
        "PyTorch docs, torch.optim.lr_scheduler.LambdaLR "
        "(https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.LambdaLR.html)",
    ),
    package=__name__,
)


def make_data(seed: int) -> Dataset:
    """Four Gaussian classes in 20 standardised features; a small MLP reaches ~98% held-out accuracy."""
    return make_blobs(seed, NUM_CLASSES, NUM_FEATURES, num_samples=1024, spread=1.0)
