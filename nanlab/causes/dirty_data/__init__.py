"""Dirty data: a corrupt record (a NaN or an Inf in its features) in an otherwise healthy training set.

Nothing is wrong with the model, the loss or the learning rate: training is healthy until the first minibatch
that holds a corrupt record. Its NaN (or Inf) flows through the forward pass into that sample's loss, the batch
mean makes the whole loss NaN, and the backward pass (``x^T * delta`` for the first layer) writes NaN into the
gradient of every weight that touched it. One step later the weights themselves are NaN.
"""
import numpy as np

from nanlab.data import Dataset, make_blobs
from nanlab.registry import Cause, Fix
from nanlab.scan_data import scan

NUM_CLASSES = 4
NUM_FEATURES = 20
HIDDEN_UNITS = 64
BATCH_SIZE = 32
NUM_SAMPLES = 640  # 480 training samples = 15 batches: every corrupt record is drawn within the first epoch
LR = 0.1

CAUSE = Cause(
    id="dirty-data",
    number=7,
    title="A corrupt record (NaN or Inf) in the inputs",
    mechanism="a NaN or Inf in one sample's features passes through the forward pass into that sample's loss; the "
              "batch mean makes the whole loss NaN, whose gradient is NaN everywhere, so the whole first-layer "
              "weight gradient (and every later one) is NaN after one backward pass",
    when="at the first minibatch that holds a corrupt record: anywhere in the first epoch, and again every epoch; "
         "earlier steps train normally",
    symptom="a healthy, falling loss turns NaN in one step, with no growth of the gradient norm before it; "
            "with shuffling the step moves from run to run; with batch_size=1, shuffle=False it is the index of "
            "the bad record",
    fixes=(
        Fix("drop-corrupt-records", "scan the training set (nanlab.scan) and drop the records with non-finite "
            "values"),
        Fix("impute-corrupt-values", "repair: replace each non-finite value by its feature's median over the "
            "finite training values"),
        Fix("skip-in-loader", "validate at load: the batch pipeline drops any record with a non-finite value "
            "before it reaches the model"),
        Fix("nan-to-num-loss", "torch.nan_to_num(loss) / tf.where(is_finite(loss), loss, 0): the printed loss is "
            "finite, but the gradient of the corrupt sample is still NaN (NaN x 0 = NaN)",
            hides_problem=True, still_nonfinite=True),
    ),
    frameworks=("torch", "tensorflow"),
    steps=60,
    score_name="held-out accuracy",
    pass_score=0.8,
    sources=(
        "digest of NaN causes (zh), answer 3: a loss that turned NaN at a fixed iteration every run was dirty "
        "training data, found with batch_size=1, shuffle=False and deleted one record at a time",
        "digest of NaN causes (zh), answer 8.3 (Caffe): NaN in the input, e.g. a corrupt image; pass every "
        "sample through a checking network before training",
        "TF classifier NaN write-up (zh): check the input for NaN/Inf with NumPy; its np.nan_to_num(X) turns "
        "Inf into the largest float (3.4e38): whether training then survives depends on the seed (the notebooks "
        "run it)",
    ),
    package=__name__,
)


def corrupt_records(seed: int, num_train: int) -> tuple[int, int]:
    """Which training records are corrupt (seeded): the first gets a NaN, the second an Inf."""
    first, second = np.random.default_rng(seed + 2000).choice(num_train, size=2, replace=False)
    return int(first), int(second)


def make_data(seed: int) -> Dataset:
    """Four Gaussian classes in 20 standardised features; two training records carry a NaN and an Inf."""
    clean = make_blobs(seed, NUM_CLASSES, NUM_FEATURES, num_samples=NUM_SAMPLES, spread=1.0)
    x_train = clean.x_train.copy()
    rng = np.random.default_rng(seed + 3000)
    nan_record, inf_record = corrupt_records(seed, len(x_train))
    x_train[nan_record, rng.integers(NUM_FEATURES)] = np.nan  # a missing field read as NaN
    x_train[inf_record, rng.integers(NUM_FEATURES)] = np.inf  # a ratio whose denominator was 0 in preprocessing
    return Dataset(x_train, clean.y_train, clean.x_eval, clean.y_eval)


def drop_corrupt_records(data: Dataset) -> Dataset:
    """The training set without the records ``nanlab.scan`` finds non-finite values in."""
    corrupt = scan(data.x_train, progress=False).nonfinite_samples
    keep = np.setdiff1d(np.arange(len(data.x_train)), corrupt)
    return Dataset(data.x_train[keep], data.y_train[keep], data.x_eval, data.y_eval)


def impute_corrupt_values(data: Dataset) -> Dataset:
    """Each non-finite value replaced by its feature's median over the finite training values."""
    finite = np.isfinite(data.x_train)
    medians = np.nanmedian(np.where(finite, data.x_train, np.nan), axis=0)
    x_train = np.where(finite, data.x_train, medians).astype(data.x_train.dtype)
    return Dataset(x_train, data.y_train, data.x_eval, data.y_eval)


def finite_records(x: np.ndarray) -> np.ndarray:
    """A boolean mask: True for the records whose features are all finite."""
    return np.isfinite(x.reshape(len(x), -1)).all(axis=1)
