"""Masked attention: an attention row whose every key is masked with -inf.

Padding keys are masked by adding ``-inf`` to their scores before the softmax, so that ``exp(-inf) = 0`` gives
them no weight. A query with no valid key at all (an empty sequence, a fully padded row, a causal mask that
leaves nothing) has ``-inf`` everywhere: the softmax subtracts the row's maximum, ``-inf - (-inf) = NaN``, and
the whole row of weights is NaN.
"""
import numpy as np

from nanlab.data import Dataset
from nanlab.registry import Cause, Fix

NUM_CLASSES = 4
NUM_FEATURES = 8
MAX_LENGTH = 6
KEY_UNITS = 16
BATCH_SIZE = 32
LR = 0.01  # Adam
EMPTY_FRACTION = 0.03  # sequences with no valid token (an empty record): every key of their row is masked
MASK_VALUE = -1e9  # the finite-mask fix: a large negative score instead of -inf

CAUSE = Cause(
    id="masked-attention",
    number=13,
    title="Masked attention: a softmax over a row whose every key is masked with -inf",
    mechanism="an additive mask of -inf makes exp(-inf) = 0 for padding keys; a row with no valid key is -inf "
              "everywhere, the softmax's max-subtraction computes -inf - (-inf) = NaN and every weight of that row "
              "is NaN",
    when="at the first batch holding an empty or fully padded sequence (or a query whose causal/padding mask "
         "leaves no key), usually within a few steps; it comes and goes with the batch composition",
    symptom="loss NaN at an early, batch-dependent step; the forward pass's first NaN is the attention softmax, "
            "whose input row is all -inf, and only the samples with no valid key carry it",
    fixes=(
        Fix("finite-mask", "mask with a large finite negative score (-1e9) instead of -inf: an empty row gets "
            "uniform weights over padding, whose values are zeros"),
        Fix("guard-empty-rows", "leave the rows with no valid key unmasked and zero their pooled output"),
        Fix("nan-to-num", "replace the NaN weights by 0 after the softmax: the forward pass is finite, but the "
            "softmax's backward still multiplies by its NaN output and the added mask passes that NaN on to the "
            "scores", hides_problem=True, still_nonfinite=True),
    ),
    frameworks=("torch", "tensorflow"),
    steps=100,
    score_name="held-out accuracy",
    pass_score=0.8,
    sources=(
        "PyTorch docs, torch.nn.MultiheadAttention: key_padding_mask (measured here, torch 2.13: a sample whose keys "
        "are all masked gives NaN; F.scaled_dot_product_attention gives 0 for a fully masked row on the CPU)",
        "Keras docs, keras.layers.MultiHeadAttention: attention_mask (measured here, Keras 3.15: a query whose keys "
        "are all masked stays finite, since Keras' masked softmax adds a large finite negative number)",
    ),
    package=__name__,
)


def make_data(seed: int) -> Dataset:
    """Padded sequences of up to 6 tokens, each token its class centre plus noise; padding tokens are zeros and
    ``mask`` marks the valid ones. 3% of the sequences have no valid token. ``x`` is ``(n, 6, 9)``: the 8
    features, then the mask as a 0/1 column, so that one tensor carries a batch."""
    rng = np.random.default_rng(seed)
    num_samples = 1024
    centres = rng.normal(0.0, 1.0, size=(NUM_CLASSES, NUM_FEATURES))
    labels = rng.integers(0, NUM_CLASSES, size=num_samples)
    lengths = rng.integers(1, MAX_LENGTH + 1, size=num_samples)
    lengths[rng.random(num_samples) < EMPTY_FRACTION] = 0
    mask = np.arange(MAX_LENGTH)[None, :] < lengths[:, None]
    tokens = centres[labels][:, None, :] + rng.normal(0.0, 1.0, size=(num_samples, MAX_LENGTH, NUM_FEATURES))
    tokens = tokens * mask[:, :, None]
    x = np.concatenate([tokens, mask[:, :, None]], axis=-1).astype(np.float32)
    y = labels.astype(np.int64)
    num_eval = num_samples // 4
    return Dataset(x[num_eval:], y[num_eval:], x[:num_eval], y[:num_eval])
