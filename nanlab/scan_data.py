"""``nanlab.scan`` (this module is ``scan_data`` so that it does not shadow the function): find the data that makes training go non-finite.

Works on NumPy arrays, torch and TensorFlow tensors (in memory) and on a torch ``DataLoader`` or a
``tf.data.Dataset`` (streamed batch by batch, with a progress bar). Neither framework is imported here: tensors are
recognised by their ``.numpy()`` / ``.detach()`` methods, and a stream by being iterable.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nanlab.errors import NanlabError
from nanlab.evidence import (HUGE_TARGET_SCALE, IGNORE_INDEX, UNNORMALISED_SCALE, as_array, check_num_classes,
                             inspect_labels, listed)

@dataclass
class ScanReport:
    """What ``scan`` found. Indices count samples from 0 across the whole stream."""

    num_samples: int = 0
    num_features: int = 0
    nonfinite_samples: list[int] = field(default_factory=list)
    nonfinite_features: list[int] = field(default_factory=list)
    bad_label_samples: list[int] = field(default_factory=list)
    label_problems: list[str] = field(default_factory=list)
    padding_samples: list[int] = field(default_factory=list)
    zero_rows: list[int] = field(default_factory=list)
    x_min: float = np.inf
    x_max: float = -np.inf
    x_is_ids: bool = False
    y_max_abs: float | None = None
    findings: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    @property
    def unnormalised(self) -> bool:
        """Inputs far from unit scale. Integer ids (token or category ids for an embedding) are not a scale."""
        return not self.x_is_ids and max(abs(self.x_min), abs(self.x_max)) > UNNORMALISED_SCALE

    @property
    def huge_targets(self) -> bool:
        return self.y_max_abs is not None and self.y_max_abs > HUGE_TARGET_SCALE

    def __str__(self) -> str:
        head = f"scanned {self.num_samples} samples x {self.num_features} features"
        if self.clean:
            return f"{head}: nothing suspicious."
        return f"{head}: " + "; ".join(self.findings) + "."


def scan(x, y=None, num_classes: int | None = None, progress: bool = True,
         ignore_index: int | None = IGNORE_INDEX) -> ScanReport:
    """Scan inputs ``x`` (and targets ``y``) for what makes a loss go non-finite.

    ``x`` is an array or tensor with samples along axis 0, or a torch DataLoader / ``tf.data.Dataset`` yielding
    ``(x, y)`` batches (then ``y`` must be None). ``num_classes`` enables the out-of-range label check. Label
    positions equal to ``ignore_index`` (PyTorch's default -100) are padding, counted but never called bad; pass
    ``None`` when your loss has no such convention. Integer inputs other than ``uint8`` are read as ids for an
    embedding (token or category ids), so their size is not called unnormalised; ``uint8`` is read as pixels.
    """
    if num_classes is not None:
        check_num_classes(num_classes)
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer))):
        raise NanlabError(f"ignore_index must be an integer or None, got {ignore_index!r}")
    scanner = _Scanner(num_classes, ignore_index)
    if _is_stream(x):
        if y is not None:
            raise NanlabError("scan(loader): pass y=None; the DataLoader or tf.data.Dataset yields (x, y) batches")
        batches = _progress(x, progress)
        for batch in batches:
            bx, by = _split_batch(batch)
            scanner.add(as_array(bx, "x"), None if by is None else as_array(by, "y"))
    else:
        ax = as_array(x, "x")
        ay = None if y is None else as_array(y, "y")
        if ay is not None and len(ay) != len(ax):
            raise NanlabError(f"x and y must have the same number of samples, got {len(ax)} and {len(ay)}")
        scanner.add(ax, ay)
    return scanner.finish()


class _Scanner:
    """Accumulates findings batch by batch, so a stream never needs to fit in memory."""

    def __init__(self, num_classes: int | None, ignore_index: int | None):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.report = ScanReport()
        self.bad_features: set[int] = set()
        self.label_samples: dict[str, list[int]] = {}
        self.nonfinite_labels: list[int] = []
        self.classification = num_classes is not None
        self.y_is_integer = True
        self.x_dtype_kinds: set[str] = set()

    def add(self, x: np.ndarray, y: np.ndarray | None) -> None:
        report, offset = self.report, self.report.num_samples
        if x.ndim == 0:
            raise NanlabError("x must have a sample axis (shape (num_samples, ...)), got a scalar")
        if y is not None and len(y) != len(x):
            raise NanlabError(f"a batch has {len(x)} inputs but {len(y)} targets; they must match")
        if not len(x):
            return
        flat = x.reshape(len(x), -1).astype(np.float64, copy=False)
        if report.num_features and flat.shape[1] != report.num_features:
            raise NanlabError(f"every sample must have the same shape; got {flat.shape[1]} features after "
                              f"{report.num_features}")
        report.num_features = flat.shape[1]
        self.x_dtype_kinds.add("ids" if x.dtype.kind in "iu" and x.dtype != np.uint8 else "values")
        finite = np.isfinite(flat)
        report.nonfinite_samples += (offset + np.flatnonzero(~finite.all(axis=1))).tolist()
        self.bad_features.update(np.flatnonzero(~finite.all(axis=0)).tolist())
        report.zero_rows += (offset + np.flatnonzero((flat == 0).all(axis=1))).tolist()
        if finite.any():
            report.x_min = min(report.x_min, float(flat[finite].min()))
            report.x_max = max(report.x_max, float(flat[finite].max()))
        if y is not None:
            self._add_targets(y, offset)
        report.num_samples += len(x)

    def _add_targets(self, y: np.ndarray, offset: int) -> None:
        labels = inspect_labels(y, self.num_classes, self.ignore_index)
        self.nonfinite_labels += [offset + i for i in labels.nonfinite]
        self.y_is_integer &= not labels.non_integer
        for what, samples in labels.problems():
            self.label_samples.setdefault(what, []).extend(offset + i for i in samples)
        self.report.padding_samples += [offset + i for i in labels.padding]
        values = y.astype(np.float64, copy=False)
        values = values[np.isfinite(values) & (values != self.ignore_index if self.ignore_index is not None else True)]
        largest = float(np.abs(values).max()) if values.size else 0.0
        self.report.y_max_abs = max(self.report.y_max_abs or 0.0, largest)

    def finish(self) -> ScanReport:
        report = self.report
        report.nonfinite_features = sorted(self.bad_features)
        findings = report.findings
        if report.nonfinite_samples:
            findings.append(f"non-finite inputs in {len(report.nonfinite_samples)} samples "
                            f"({listed(report.nonfinite_samples)}), features {listed(report.nonfinite_features)}")
        if self.nonfinite_labels:
            findings.append(f"non-finite targets in samples {listed(self.nonfinite_labels)}")
        report.x_is_ids = self.x_dtype_kinds == {"ids"}
        classification = self.classification or (self.y_is_integer and report.y_max_abs is not None)
        if classification:
            for text, indices in self.label_samples.items():
                if text == "non-finite labels" or (text == "non-integer labels" and not self.classification):
                    continue  # non-finite targets are listed above; fractional ones make this regression
                report.label_problems.append(text)
                report.bad_label_samples += indices
                findings.append(f"{text} in samples {listed(indices)}")
            report.bad_label_samples = sorted(set(report.bad_label_samples))
        elif report.huge_targets:
            findings.append(f"huge target scale (max |y| = {report.y_max_abs:.3g}); standardise the targets")
        if report.unnormalised:
            findings.append(f"inputs far from normalised (values in [{report.x_min:g}, {report.x_max:g}]); "
                            "standardise them")
        if report.zero_rows:
            findings.append(f"{len(report.zero_rows)} all-zero samples ({listed(report.zero_rows)})")
        return report


def _is_stream(value) -> bool:
    module = type(value).__module__
    return (module.startswith("torch.utils.data") or (module.startswith("tensorflow") and hasattr(value, "element_spec")))


def _progress(stream, enabled: bool):
    from tqdm.auto import tqdm

    total = len(stream) if hasattr(stream, "__len__") and not hasattr(stream, "element_spec") else None
    if hasattr(stream, "element_spec"):
        cardinality = int(stream.cardinality())
        total = cardinality if cardinality >= 0 else None
    return tqdm(stream, total=total, desc="nanlab.scan", unit="batch", disable=not enabled)


def _split_batch(batch):
    if isinstance(batch, dict):
        raise NanlabError("scan streams need (x, y) or x batches, got a dict; map the dataset to (x, y) first")
    if isinstance(batch, (tuple, list)):
        if len(batch) not in (1, 2, 3):
            raise NanlabError(f"scan streams need (x,) or (x, y) batches, got a tuple of {len(batch)}")
        return batch[0], batch[1] if len(batch) > 1 else None
    return batch, None
