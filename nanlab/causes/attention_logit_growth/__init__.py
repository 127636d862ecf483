"""Attention-logit growth: the attention logits q·k grow until they pass float16's range, and the softmax gets
inf - inf.

An attention logit is the product of two learned projections, ``(x W_q) · (x W_k) / sqrt(d)``: when a large rate
lets W_q and W_k grow, the logits grow like the *product* of the two, quadratically in the weights. Wortsman et al.
(ICLR 2024) reproduce this instability in small Transformers by raising the learning rate: the logits' maxima grow
by orders of magnitude, the attention collapses onto one key (entropy collapse) and the loss diverges; QK-layernorm
(Dehghani et al. 2023, ViT-22B) keeps them bounded. Under float16 the growth ends in a concrete NaN: a logit past
65504 is inf in the matmul itself, and the softmax of a row holding +inf computes inf - inf = NaN.

The recipe: sequences of 16 tokens, each a noisy copy of one of four class centres, one token flagged; the label is
the class of the flagged token, so the attention must learn to look at it (and is rewarded for looking at it ever
more sharply: the logits have a reason to grow). One self-attention layer under float16 autocast (torch) or the
``mixed_float16`` policy (Keras), Adam at 0.01, and the query and key projections at a 100 times higher rate. A
model this small tolerates neither a rate of 1 everywhere nor, for long, 0.1 (its embedding and head fail first,
and it stops learning at any rate past 0.03 without ever overflowing within a short budget), so the recipe raises
the rate where the instability lives: torch gives the projections their own parameter group; Keras 3 has no
parameter groups, so its layer multiplies the projections by 100 (a muP-style multiplier on a weight initialised
100 times smaller: Adam's step on the weight does not depend on the gradient's scale, so the product moves 100 times
faster, the same effect). The logits' maxima grow from about 1 to past 65504 within 5 to 20 steps.

z-loss (Chowdhery et al. 2022, PaLM; Wortsman et al.) is the same cure for the *output* logits: a penalty
``1e-4 * logsumexp(logits)**2`` that keeps the softmax normaliser near 1; it does nothing for the attention logits
and is not one of this recipe's fixes (the notebooks mention it beside them).
"""
import numpy as np

from nanlab.data import Dataset
from nanlab.registry import Cause, Fix

NUM_CLASSES = 4
NUM_FEATURES = 16  # per token, plus one flag feature
SEQUENCE_LENGTH = 16
MODEL_DIM = 32
BATCH_SIZE = 32
NUM_SAMPLES = 1024
NOISE = 0.5
LR = 1e-2  # Adam, every parameter outside the query and key projections
QK_LR_MULTIPLIER = 100.0  # the broken setting: the query and key projections at 100 x LR = 1.0
WARMUP_STEPS = 10  # the lower-rate fix's linear warmup
SOFT_CAP = 50.0  # Gemma 2's attention soft-cap: cap * tanh(logits / cap)
FLOAT16_MAX = 65504.0

CAUSE = Cause(
    id="attention-logit-growth",
    number=20,
    title="attention-logit growth: q·k past float16's range",
    mechanism="the attention logits are a product of two learned projections, q·k / sqrt(d): a rate large enough "
              "for the query and key weights to grow makes the logits grow like the product of the two, until the "
              "attention collapses onto one key and, in float16, a logit passes 65504: the matmul gives inf and the "
              "softmax of a row holding inf is inf - inf = NaN",
    when="training attention at a high learning rate (or a high rate on the attention projections: a parameter "
         "group, a multiplier) without QK-layernorm, most visibly in float16, where the logits have 65504 to grow "
         "into; in bfloat16 or float32 the same growth collapses the attention and the loss diverges later",
    symptom="the largest attention logit grows by orders of magnitude over the steps before the NaN while the loss "
            "stalls; the first non-finite value is the q·k matmul inside the attention (inf from finite q and k of "
            "a few hundred), then NaN from the softmax",
    fixes=(
        Fix("qk-layernorm", "normalise the queries and the keys (a LayerNorm on each, Dehghani et al. 2023; "
            "Wortsman et al. 2024) before their product: each logit is bounded by the norms' gains, whatever the "
            "projections' weights do"),
        Fix("lower-rate-warmup", "train the query and key projections at the model's rate (0.01), reached by a "
            "linear warmup over the first 10 steps"),
        Fix("soft-cap", "soft-cap the logits, cap * tanh(logits / cap) with Gemma 2's cap of 50: the softmax never "
            "sees more than 50, but the q·k product is still computed in float16 before the cap, and Adam keeps "
            "growing the projections at this rate (tanh's flat gradient does not stop a normalised step), so the "
            "logits still overflow to inf and the cap turns them into a saturated, untrainable attention",
            hides_problem=True),
    ),
    frameworks=("torch", "tensorflow"),
    steps=120,
    score_name="held-out accuracy",
    pass_score=0.65,
    sources=(
        "Wortsman et al., ICLR 2024, Small-scale proxies for large-scale Transformer training instabilities: "
        "attention-logit growth at high learning rates, reproduced in small models; qk-layernorm and z-loss "
        "mitigate it (https://arxiv.org/abs/2309.14322)",
        "Dehghani et al. 2023, Scaling Vision Transformers to 22 Billion Parameters: the attention logits diverged "
        "(near one-hot attention, the loss diverged) and a LayerNorm on the queries and keys fixed it "
        "(https://arxiv.org/abs/2302.05442)",
        "Gemma Team 2024, Gemma 2: attention logits soft-capped at 50 and final logits at 30, "
        "cap * tanh(logits / cap) (https://arxiv.org/abs/2408.00118)",
        "Chowdhery et al. 2022, PaLM: the z-loss 1e-4 * log(Z)**2 on the output softmax for stability "
        "(https://arxiv.org/abs/2204.02311)",
    ),
    package=__name__,
)


def make_data(seed: int) -> Dataset:
    """``NUM_SAMPLES`` sequences of ``SEQUENCE_LENGTH`` tokens: each token a class centre plus noise, with a flag
    feature set on one token; the label is the flagged token's class (chance: 0.25)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(NUM_CLASSES, NUM_FEATURES))
    classes = rng.integers(0, NUM_CLASSES, size=(NUM_SAMPLES, SEQUENCE_LENGTH))
    tokens = centres[classes] + rng.normal(0.0, NOISE, size=(NUM_SAMPLES, SEQUENCE_LENGTH, NUM_FEATURES))
    flagged = rng.integers(0, SEQUENCE_LENGTH, size=NUM_SAMPLES)
    flag = np.zeros((NUM_SAMPLES, SEQUENCE_LENGTH, 1))
    flag[np.arange(NUM_SAMPLES), flagged, 0] = 1.0
    x = np.concatenate([tokens, flag], axis=-1).astype(np.float32)
    y = classes[np.arange(NUM_SAMPLES), flagged].astype(np.int64)
    num_eval = NUM_SAMPLES // 4
    return Dataset(x[num_eval:], y[num_eval:], x[:num_eval], y[:num_eval])
