"""Exploding RNN gradients: backpropagation through time multiplies one Jacobian per time step, so a recurrent
matrix with spectral radius above 1 makes the gradient grow geometrically with the sequence length (Pascanu, Mikolov
& Bengio, 2013). One SGD step along that gradient throws the weights so far that the next forward pass overflows."""
import numpy as np

from nanlab.data import Dataset
from nanlab.registry import Cause, Fix

SEQ_LEN = 30
NUM_SAMPLES = 640
SIGNAL = 0.5  # each input is N(+-0.5, 1): the class is the sign of the shift, visible only over many steps
HIDDEN_UNITS = 16
BATCH_SIZE = 32
LR = 0.2
GRU_LR = 0.1  # a GRU at 0.2 trains too, but its loss spikes late in some seeds: gates do not make big steps safe
SPECTRAL_RADIUS = 1.25  # recurrent matrix 1.25 * I: the ReLU state and its gradient grow 1.25x per step
MAX_GRAD_NORM = 1.0
CLIP_VALUE = 1.0  # clip-by-value with the same number as the norm bound: the contrast in the notebooks

CAUSE = Cause(
    id="exploding-rnn-gradients",
    number=6,
    title="Exploding gradients in a recurrent network",
    mechanism="backpropagation through time multiplies one recurrent Jacobian per step; with spectral radius "
              "above 1 the gradient grows geometrically with sequence length and one SGD step overflows the weights",
    when="in the first steps for long sequences (or later, when training pushes the recurrent weights past "
         "spectral radius 1); worse as sequences get longer",
    symptom="gradient norm of 1e3-1e6 or more while the loss is still ordinary, then a loss of 1e30+, Inf, NaN; "
            "the gradient norm at initialisation grows by a constant factor per extra time step",
    fixes=(
        Fix("clip-grad-norm", "the same RNN, gradients clipped to global norm 1.0 "
                              "(torch clip_grad_norm_, Keras global_clipnorm)"),
        Fix("gru", "a gated cell (GRU) instead of the vanilla RNN, default initialisation, SGD at 0.1"),
    ),
    frameworks=("torch", "tensorflow"),
    steps=100,
    score_name="held-out accuracy",
    pass_score=0.85,
    sources=(
        "Pascanu, Mikolov & Bengio, 2013, 'On the difficulty of training recurrent neural networks'",
        "Le, Jaitly & Hinton, 2015, 'A Simple Way to Initialize Recurrent Networks of Rectified Linear Units'",
        "Stack Overflow 'Deep-Learning Nan loss reasons': exploding gradients; clip them",
    ),
    package=__name__,
)


def make_data(seed: int, seq_len: int = SEQ_LEN) -> Dataset:
    """Sequences of ``seq_len`` noisy scalars whose mean is +0.5 (class 1) or -0.5 (class 0)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=NUM_SAMPLES)
    shift = SIGNAL * (2 * labels - 1)
    x = (rng.normal(size=(NUM_SAMPLES, seq_len, 1)) + shift[:, None, None]).astype(np.float32)
    num_eval = NUM_SAMPLES // 4
    return Dataset(x[num_eval:], labels[num_eval:].astype(np.int64), x[:num_eval], labels[:num_eval].astype(np.int64))


def recurrent_matrix(spectral_radius: float = SPECTRAL_RADIUS) -> np.ndarray:
    """The hidden-to-hidden weights: ``spectral_radius`` times the identity (identity is the IRNN init)."""
    return (spectral_radius * np.eye(HIDDEN_UNITS)).astype(np.float32)
