"""Degenerate statistics: the unbiased std (or variance) of one element, and the mean of an empty selection.

Bessel's correction divides the sum of squared deviations by ``n - 1``; over one element both are 0, and ``0 / 0 =
NaN``, with no zero anywhere in the data. PyTorch's ``std`` and ``var`` are unbiased by default (``correction=1``),
so ``x.std(dim=0)`` over a batch of one is NaN (and warns, once); a last batch of one sample is what a data set of
``k * batch_size + 1`` samples gives a ``DataLoader`` with ``drop_last=False``, the default. TensorFlow's
``tf.math.reduce_std`` and ``reduce_variance`` are the population statistics (``n`` in the denominator: 0.0 for one
element), so in TensorFlow the same model goes NaN only where the unbiased std is written by hand (as code ported
from PyTorch, or a textbook formula, does). The mean of an empty selection (``x[mask].mean()``,
``tf.reduce_mean(tf.boolean_mask(...))`` with nothing selected) is the same ``0 / 0``.

The recipe: a hand-written batch standardisation (a batch norm without running statistics or an epsilon) after
the first layer of an MLP, fed by the framework's own loader over 257 = 8 * 32 + 1 samples; every epoch's last step
is a batch of one, so the run goes NaN at step 8 on every seed. The fixes are the population statistic under a root
with an epsilon (what the frameworks' batch norms compute), and dropping the last, incomplete batch.
"""
from nanlab.data import Dataset, make_blobs
from nanlab.registry import Cause, Fix

NUM_CLASSES = 4
NUM_FEATURES = 20
HIDDEN_UNITS = 32
BATCH_SIZE = 32
FULL_BATCHES = 8
NUM_TRAIN = FULL_BATCHES * BATCH_SIZE + 1  # 257: every epoch ends with a batch of one sample
NUM_SAMPLES = 342  # 257 to train on, int(342 * 0.25) = 85 held out
LR = 0.01  # Adam
EPS = 1e-5  # under the root, as torch.nn.BatchNorm1d's default eps; also the wrong fix's eps on the std

CAUSE = Cause(
    id="degenerate-statistics",
    number=16,
    title="Degenerate statistics: the std of one sample, the mean of nothing",
    mechanism="the unbiased std or variance divides by n - 1 (Bessel's correction): over a batch or a group of one "
              "element it is 0 / 0 = NaN, with no zero in the data; the mean of an empty selection is 0 / 0 too. "
              "torch.std / torch.var are unbiased by default; tf.math.reduce_std / reduce_variance are the "
              "population statistics (0.0 for one element), so in TensorFlow it takes a hand-written unbiased std",
    when="at the last step of the first epoch when the data set holds k * batch_size + 1 samples and the loader "
         "keeps the incomplete batch (drop_last=False, drop_remainder=False: the defaults), or at the first group "
         "of one member (a per-group std, a group-relative advantage) or the first empty selection",
    symptom="loss NaN at the same step of every run (the epoch's last), straight from normal values, on every "
            "seed; PyTorch warns 'std(): degrees of freedom is <= 0' once; the failing op is a std / var (torch) "
            "or a 0 / 0 division (a hand-written std in TensorFlow) over a batch of size 1, or a mean of an empty "
            "tensor",
    fixes=(
        Fix("population-std", "the population statistic under the root with an epsilon, as batch norm computes "
            "it: (h - mean) / sqrt(var(correction=0) + 1e-5) (tf.math.reduce_variance in TensorFlow); a batch of "
            "one standardises to 0"),
        Fix("drop-last", "drop the incomplete last batch: DataLoader(drop_last=True) / "
            "dataset.batch(..., drop_remainder=True)"),
        Fix("eps-on-std", "an epsilon on the std: (h - mean) / (std + 1e-5); the std of one element is NaN, not 0, "
            "and NaN + eps = NaN", hides_problem=True, still_nonfinite=True),
        Fix("nan-to-zero", "replace the NaN variance by 0 (nan_to_num / where(is_nan(var), 0, var)) under "
            "sqrt(var + 1e-5): the loss prints finite, but the variance's gradient is still 0 / 0 = NaN",
            hides_problem=True, still_nonfinite=True),
    ),
    frameworks=("torch", "tensorflow"),
    steps=50,  # 5.5 epochs of 9 steps: the fixes end on a full batch
    score_name="held-out accuracy",
    pass_score=0.8,
    sources=(
        "pytorch/pytorch#29372: torch.std() returns nan for single item tensors (np.std gives 0): the default is "
        "the unbiased estimate, dividing by n - 1; unbiased=False gives 0",
        "pytorch/pytorch#4320 (comment): torch.std(a, dim=0) over a dimension with a single entry returns nan",
        "speechbrain/speechbrain#493: InputNormalization's torch.std(x, dim=0) returns all-NaN values for one row",
        "digantamisra98/EvoNorm#5: torch.var of one element is NaN; the merged fix sets the variance to 0 where it "
        "is NaN",
        "huggingface/trl#5773 (review): a group with one valid reward has a NaN std (Bessel's correction), and "
        "advantages / (std + 1e-4) is still 0 / NaN = NaN",
        "PyTorch docs, torch.std / torch.var: correction=1 by default (Bessel's correction); torch.nn.BatchNorm1d "
        "raises 'Expected more than 1 value per channel when training' for a batch of one",
        "TensorFlow docs, tf.math.reduce_std / tf.math.reduce_variance: the population statistics; tf.data "
        "Dataset.batch(drop_remainder=False) keeps the last, smaller batch",
    ),
    package=__name__,
)


def make_data(seed: int) -> Dataset:
    """Four Gaussian classes in 20 features: 257 samples to train on (8 batches of 32 and one of 1), 85 held out."""
    data = make_blobs(seed, NUM_CLASSES, NUM_FEATURES, num_samples=NUM_SAMPLES, spread=1.0)
    assert len(data.x_train) == NUM_TRAIN, len(data.x_train)
    return data
