"""Framework-neutral evidence about data and labels: one place that says what is wrong with a batch or a dataset.

The scanner (``nanlab.scan``), both watches (their per-step label check and their replays) and the label recipes
ask these functions, so that "bad labels" means the same thing everywhere. Everything here works on NumPy arrays;
``as_array`` turns torch and TensorFlow tensors into one without importing either framework.

Sparse cross-entropy looks a label up as an index into the logits, so a label outside ``0..num_classes-1`` (a stray
8000, or -1 from a {-1, 0, 1} encoding) makes the CPU raise, the GPU return NaN (TensorFlow) or trip a device-side
assert (PyTorch), or, in a hand-written ``log_probs[range(n), y]``, silently wrap -1 to the last class.
"""
from __future__ import annotations

import numpy as np

from nanlab.errors import NanlabError

HUGE_TARGET_SCALE = 1e4  # regression targets past this make a squared error head for float32's 3e38
UNNORMALISED_SCALE = 20.0  # |x| past this (e.g. 0-255 pixels) means the inputs were not standardised
MAX_LISTED = 8


def listed(indices: list[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:MAX_LISTED])
    return shown + (f" and {len(indices) - MAX_LISTED} more" if len(indices) > MAX_LISTED else "")


def _to_numpy(value):
    if hasattr(value, "detach"):  # torch
        return value.detach().cpu().numpy()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):  # TensorFlow eager tensor
        return value.numpy()
    return value


def as_array(value, name: str) -> np.ndarray:
    """``value`` as a numeric NumPy array with a sample axis, or a one-line NanlabError saying what is valid."""
    value = _to_numpy(value)
    if isinstance(value, (list, tuple)):
        lengths = {np.shape(item) for item in value}
        if len(lengths) > 1:
            raise NanlabError(f"{name} is ragged (samples of shapes {sorted(lengths)[:3]}); pad it or pass an array")
    array = np.asarray(value)
    if array.dtype.kind == "b":
        array = array.astype(np.int64)
    if array.dtype.kind not in "iuf":
        raise NanlabError(f"{name} must be numeric (int or float), got dtype {array.dtype}")
    if array.ndim == 0:
        raise NanlabError(f"{name} must have a sample axis (shape (num_samples, ...)), got a scalar")
    return array


def label_problem(y, num_classes: int | None) -> tuple[str, list[int]] | None:
    """For class labels ``y``: a phrase naming what is wrong and the offending indices, or None when they are fine."""
    labels = as_array(y, "y")
    if labels.ndim > 1:
        if labels.shape[1:] != (1,) * (labels.ndim - 1):
            return None  # one-hot or per-position targets: not class ids
        labels = labels.reshape(-1)
    if labels.dtype.kind not in "iu" and not (labels.dtype.kind == "f" and np.all(labels == np.round(labels))):
        return None
    bad = labels < 0
    if num_classes is not None:
        bad |= labels >= num_classes
    if not bad.any():
        return None
    indices = np.flatnonzero(bad).tolist()
    valid = f"0..{num_classes - 1}" if num_classes is not None else "non-negative ids"
    values = ", ".join(f"{labels[i]:g}" for i in indices[:MAX_LISTED])
    return f"labels outside {valid} (label {values} at sample {', '.join(map(str, indices[:MAX_LISTED]))})", indices


def symmetric_labels(y) -> bool:
    """True when the targets are a -1/+1 encoding (values in {-1, 0, 1}, with some -1): what log losses cannot take."""
    values = np.unique(as_array(y, "y"))
    return bool(values.size) and set(values.tolist()) <= {-1.0, 0.0, 1.0} and -1.0 in values


def find_bad_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Indices of the samples whose label is not an integer in ``0..num_classes-1`` (NaN counts as bad)."""
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise NanlabError(f"labels must be a 1-D array of class ids, got shape {labels.shape}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise NanlabError(f"num_classes must be a positive integer, got {num_classes!r}")
    if labels.dtype.kind not in "biuf":
        raise NanlabError(f"labels must be numeric class ids, got dtype {labels.dtype}")
    with np.errstate(invalid="ignore"):
        good = (labels >= 0) & (labels < num_classes) & (labels == np.floor(labels))
    return np.flatnonzero(~good)


def check_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Return ``y`` as int64 class ids, or raise NanlabError naming the offending sample indices and labels."""
    bad = find_bad_labels(y, num_classes)
    labels = np.asarray(y)
    if bad.size:
        listed = ", ".join(f"{index} (label {labels[index]:g})" for index in bad[:MAX_LISTED])
        more = f" and {bad.size - MAX_LISTED} more" if bad.size > MAX_LISTED else ""
        raise NanlabError(f"{bad.size} of {labels.size} labels are not class ids in 0..{num_classes - 1}: "
                          f"sample {listed}{more}; remap them (encode_labels) or drop those samples")
    return labels.astype(np.int64)


def encode_labels(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary label values to contiguous ids ``0..K-1``; returns ``(ids, classes)``, ``classes[ids] == y``."""
    classes, ids = np.unique(np.asarray(y), return_inverse=True)
    return ids.astype(np.int64), classes


def apply_encoding(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Encode new labels (held-out, or at serving time) with the ``classes`` found on the training set."""
    labels = np.asarray(y)
    unknown = np.flatnonzero(~np.isin(labels, classes))
    if unknown.size:
        raise NanlabError(f"labels at samples {unknown[:MAX_LISTED].tolist()} are not among the training classes "
                          f"{classes.tolist()}")
    return np.searchsorted(classes, labels).astype(np.int64)
