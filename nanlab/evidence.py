"""Framework-neutral evidence about data and labels: one place that says what is wrong with a batch or a dataset.

The scanner (``nanlab.scan``), both watches (their per-step label check and their replays) and the label recipes
ask these functions, so that "bad labels" means the same thing everywhere. Everything here works on NumPy arrays;
``as_array`` turns torch and TensorFlow tensors into one without importing either framework.

Sparse cross-entropy looks a label up as an index into the logits, so a label outside ``0..num_classes-1`` (a stray
8000, or -1 from a {-1, 0, 1} encoding) makes the CPU raise, the GPU return NaN (TensorFlow) or trip a device-side
assert (PyTorch), or, in a hand-written ``log_probs[range(n), y]``, silently wrap -1 to the last class.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nanlab.errors import NanlabError

HUGE_TARGET_SCALE = 1e4  # regression targets past this make a squared error head for float32's 3e38
UNNORMALISED_SCALE = 20.0  # |x| past this (e.g. 0-255 pixels) means the inputs were not standardised
IGNORE_INDEX = -100  # PyTorch's cross_entropy/nll_loss default: label positions the loss skips (padding)
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


def class_id_targets(target_kind: str, target_shape: tuple, output_shape: tuple, class_axis: int,
                     sparse_loss: bool = False) -> bool:
    """Whether targets are class ids for these outputs: decided by the targets' dtype and by the loss in use, never
    by shape alone. The one decision of nanlab: the scanner, every watch and every replay ask it.

    ``target_kind`` is the NumPy dtype kind of the targets (``"i"``, ``"u"``, ``"f"``, ``"b"``, ``"c"``);
    ``class_axis`` is where the outputs hold their classes (1 for torch's ``cross_entropy``, -1 for Keras).
    Integer targets are class ids when their shape is the outputs' without the class axis (or, with the class axis
    last, with a trailing 1: Keras' ``(n, 1)`` labels). Floating targets are class ids only under a sparse
    categorical loss (``sparse_loss``, e.g. Keras' ``SparseCategoricalCrossentropy`` fed float labels): otherwise
    they are regression targets, one-hot rows or soft targets. Booleans and complex numbers never are.
    """
    if target_kind not in "iuf" or (target_kind == "f" and not sparse_loss) or len(output_shape) < 2:
        return False
    axis = class_axis % len(output_shape)
    if output_shape[axis] is not None and output_shape[axis] < 2 and not sparse_loss:
        return False
    without_classes = tuple(output_shape[:axis]) + tuple(output_shape[axis + 1:])
    target_shape = tuple(target_shape)
    if target_shape == without_classes:
        return True
    return axis == len(output_shape) - 1 and target_shape == without_classes + (1,)


@dataclass(frozen=True)
class LabelFindings:
    """What is wrong with class labels, per sample (indices count samples from 0; a sample with per-position labels,
    e.g. a token sequence, is bad when any position is).

    ``padding`` are the samples holding ``ignore_index`` positions: padding the loss skips, not an error.
    ``symmetric`` is True for a -1/+1 (or -1/0/+1) encoding, padding aside.
    """

    num_classes: int | None
    ignore_index: int | None
    negative: tuple[int, ...] = ()
    out_of_range: tuple[int, ...] = ()
    non_integer: tuple[int, ...] = ()
    nonfinite: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    symmetric: bool = False
    bad_values: tuple[float, ...] = ()

    @property
    def bad(self) -> list[int]:
        """Every sample with a label the loss cannot take, sorted."""
        return sorted(set(self.negative) | set(self.out_of_range) | set(self.non_integer) | set(self.nonfinite))

    def problems(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(what, samples)`` for each kind of bad label found."""
        limit = f"num_classes ({self.num_classes})"
        kinds = [("negative labels", self.negative), (f"labels >= {limit}", self.out_of_range),
                 ("non-integer labels", self.non_integer), ("non-finite labels", self.nonfinite)]
        return [(what, samples) for what, samples in kinds if samples]

    def phrase(self) -> str | None:
        """One phrase for a report ("labels outside 0..4 (label 8000 at sample 3)"), or None when all are fine."""
        bad = self.bad
        if not bad:
            return None
        valid = f"0..{self.num_classes - 1}" if self.num_classes is not None else "non-negative integer ids"
        distinct = list(dict.fromkeys(f"{value:g}" for value in self.bad_values))  # each value once, in order
        values = ", ".join(distinct[:MAX_LISTED]) + (" …" if len(distinct) > MAX_LISTED else "")
        return f"labels outside {valid} (label {values} at sample {listed(bad)})"


def inspect_labels(y, num_classes: int | None = None, ignore_index: int | None = IGNORE_INDEX) -> LabelFindings:
    """Check class labels ``y`` (shape ``(n,)``, ``(n, 1)`` or per position ``(n, ...)``) against ``0..num_classes-1``.

    The one label check of nanlab: the scanner, both watches and the label recipes all ask it. Positions equal to
    ``ignore_index`` (PyTorch's ``cross_entropy`` default, -100) are padding; pass ``ignore_index=None`` where the
    loss has no such convention (Keras).
    """
    if num_classes is not None:
        check_num_classes(num_classes)
    labels = as_array(y, "y")
    per_sample = labels.reshape(len(labels), -1).astype(np.float64, copy=False)
    finite = np.isfinite(per_sample)
    padding = per_sample == ignore_index if ignore_index is not None else np.zeros_like(finite)
    values = np.where(finite, per_sample, 0.0)
    checked = finite & ~padding
    negative = checked & (values < 0)
    out_of_range = checked & (values >= num_classes) if num_classes is not None else np.zeros_like(finite)
    non_integer = checked & (values != np.round(values))
    bad_positions = negative | out_of_range | non_integer | ~finite
    present = np.unique(values[checked])
    return LabelFindings(
        num_classes=num_classes, ignore_index=ignore_index,
        negative=_samples(negative), out_of_range=_samples(out_of_range), non_integer=_samples(non_integer),
        nonfinite=_samples(~finite), padding=_samples(padding),
        symmetric=bool(present.size) and set(present.tolist()) <= {-1.0, 0.0, 1.0} and -1.0 in present,
        bad_values=tuple(per_sample[bad_positions].tolist()),
    )


def implied_outputs(target_shape: tuple, num_classes: int | None) -> tuple:
    """The shape of the outputs a ``num_classes``-way classifier gives for targets of ``target_shape``, classes last
    (Keras' ``(n, 1)`` labels stand for ``(n,)``): how a caller without the outputs in hand asks
    ``class_id_targets``, whose answer then rests on the targets' dtype and the loss alone."""
    target_shape = tuple(target_shape)
    if len(target_shape) > 1 and target_shape[-1] == 1:
        target_shape = target_shape[:-1]
    return (*target_shape, num_classes)


def label_problem(y, num_classes: int | None, ignore_index: int | None = IGNORE_INDEX,
                  sparse_loss: bool = False) -> tuple[str, list[int]] | None:
    """For the targets of one batch: a phrase naming what is wrong and the offending samples, or None when fine.

    Lenient: targets that are not class ids (``class_id_targets``: floating targets are class ids only under a
    sparse categorical loss, ``sparse_loss``; booleans never) are not judged here: float one-hot rows, soft targets
    and regression targets pass.
    """
    kind = np.asarray(_to_numpy(y)).dtype.kind  # before as_array, which reads booleans as 0/1
    labels = as_array(y, "y")
    if not class_id_targets(kind, labels.shape, implied_outputs(labels.shape, num_classes), class_axis=-1,
                            sparse_loss=sparse_loss):
        return None
    findings = inspect_labels(labels, num_classes, ignore_index)
    phrase = findings.phrase()
    return (phrase, findings.bad) if phrase else None


def symmetric_labels(y, ignore_index: int | None = IGNORE_INDEX) -> bool:
    """True when the targets are a -1/+1 encoding (values in {-1, 0, 1}, with some -1): what log losses cannot take."""
    return inspect_labels(y, None, ignore_index).symmetric


def find_bad_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Indices of the samples whose label is not an integer in ``0..num_classes-1`` (NaN counts as bad)."""
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise NanlabError(f"labels must be a 1-D array of class ids, got shape {labels.shape}")
    check_num_classes(num_classes)
    return np.asarray(inspect_labels(labels, num_classes, ignore_index=None).bad, dtype=np.int64)


def check_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Return ``y`` as int64 class ids, or raise NanlabError naming the offending sample indices and labels."""
    bad = find_bad_labels(y, num_classes)
    labels = np.asarray(y)
    if bad.size:
        shown = ", ".join(f"{index} (label {labels[index]:g})" for index in bad[:MAX_LISTED])
        more = f" and {bad.size - MAX_LISTED} more" if bad.size > MAX_LISTED else ""
        raise NanlabError(f"{bad.size} of {labels.size} labels are not class ids in 0..{num_classes - 1}: "
                          f"sample {shown}{more}; remap them (encode_labels) or drop those samples")
    return labels.astype(np.int64)


def check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise NanlabError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _samples(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(np.flatnonzero(mask.any(axis=1)).tolist())


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
