"""``nanlab.scan`` (this module is ``scan_data`` so that it does not shadow the function): find the data that makes
training go non-finite.

Works on NumPy arrays, torch and TensorFlow tensors (in memory) and on a torch ``DataLoader`` or a
``tf.data.Dataset`` (streamed batch by batch, with a progress bar). No framework is imported here: tensors are
recognised by their ``.numpy()`` / ``.detach()`` methods, and a stream by asking the framework it belongs to
(``backend.is_batch_stream``), loaded only for a value of that framework.

What the targets are is decided by their dtype and by what the caller says about the loss, never by shape alone
(``nanlab.evidence.class_id_targets``, the one decision the watches make too):

- integer (or boolean) targets are class ids, checked against ``0..num_classes-1`` (per position for a sequence);
- floating targets are class ids when ``num_classes`` is given (the caller says the loss takes class ids: a sparse
  categorical loss fed float labels), except a ``(n, C)`` matrix whose rows are distributions over the C classes;
- a floating ``(n, C)`` matrix (C >= 2, and C == ``num_classes`` when given) whose rows are mostly distributions
  (non-negative, summing to 1) is one-hot or soft targets (label smoothing, distillation): each row that is not a
  distribution (a negative entry, a sum off 1) is a bad target row, named by sample;
- other floating targets are regression targets, checked for their scale.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nanlab.errors import NanlabError
from nanlab.evidence import (HUGE_TARGET_SCALE, IGNORE_INDEX, MAX_LISTED, UNNORMALISED_SCALE, as_array,
                             check_num_classes, class_id_targets, implied_outputs, inspect_labels, listed)

CLASS_IDS, DISTRIBUTIONS, REGRESSION = "class ids", "distributions", "regression"  # ScanReport.targets
ROW_SUM_TOLERANCE = 1e-3  # |sum - 1| a distribution row may be off by (more for float16: C x its epsilon)

@dataclass
class ScanReport:
    """What ``scan`` found. Indices count samples from 0 across the whole stream.

    ``targets`` says how the targets were read: ``"class ids"``, ``"distributions"`` (one-hot or soft-target rows)
    or ``"regression"`` (None without targets). ``bad_label_samples`` are class ids the loss cannot take;
    ``bad_target_rows`` the rows of a distribution matrix that are not distributions (a negative entry, a sum off
    1, a non-finite entry).
    """

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
    targets: str | None = None
    bad_target_rows: list[int] = field(default_factory=list)
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
    ``(x, y)`` batches (then ``y`` must be None). ``num_classes`` says the targets are class ids (floating ones too,
    as a sparse categorical loss takes them) and enables the out-of-range label check; a floating ``(n,
    num_classes)`` matrix of one-hot or soft-target rows is checked row by row instead (see the module's docstring).
    Without ``num_classes``, integer targets are class ids and floating ones regression targets, unless they form
    such a matrix. Label positions equal to ``ignore_index`` (PyTorch's default -100) are padding, counted but never
    called bad; pass ``None`` when your loss has no such convention. Integer inputs other than ``uint8`` are read as
    ids for an embedding (token or category ids), so their size is not called unnormalised; ``uint8`` is read as
    pixels.
    """
    if num_classes is not None:
        check_num_classes(num_classes)
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer))):
        raise NanlabError(f"ignore_index must be an integer or None, got {ignore_index!r}")
    scanner = _Scanner(num_classes, ignore_index)
    framework = _stream_framework(x)
    if framework is not None:
        if y is not None:
            raise NanlabError("scan(loader): pass y=None; the DataLoader or tf.data.Dataset yields (x, y) batches")
        batches = _progress(x, framework.backend.stream_length(x), progress)
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
    """Accumulates findings batch by batch, so a stream never needs to fit in memory. How the targets are read is
    decided at the end, over every batch: each batch is checked both as class ids (or regression targets) and, when
    it can be one, as a matrix of distribution rows."""

    def __init__(self, num_classes: int | None, ignore_index: int | None):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.report = ScanReport()
        self.bad_features: set[int] = set()
        self.label_samples: dict[str, list[int]] = {}
        self.nonfinite_labels: list[int] = []
        self.x_dtype_kinds: set[str] = set()
        self.saw_targets = False
        self.class_ids = True  # every batch's targets are class ids (nanlab.evidence.class_id_targets)
        self.matrix = True  # every batch's targets can be a (n, C) matrix of distribution rows
        self.target_rows = self.distribution_rows = 0
        self.negative_rows: list[int] = []
        self.off_sum_rows: list[int] = []
        self.off_sums: list[float] = []

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
        self.saw_targets = True
        # The caller's num_classes says the loss takes class ids: floats are then class ids as a sparse loss reads them
        self.class_ids &= class_id_targets(y.dtype.kind, y.shape, implied_outputs(y.shape, self.num_classes),
                                           class_axis=-1, sparse_loss=self.num_classes is not None)
        self._add_distribution_rows(y, offset)
        labels = inspect_labels(y, self.num_classes, self.ignore_index)
        self.nonfinite_labels += [offset + i for i in labels.nonfinite]
        for what, samples in labels.problems():
            self.label_samples.setdefault(what, []).extend(offset + i for i in samples)
        self.report.padding_samples += [offset + i for i in labels.padding]
        values = y.astype(np.float64, copy=False)
        values = values[np.isfinite(values) & (values != self.ignore_index if self.ignore_index is not None else True)]
        largest = float(np.abs(values).max()) if values.size else 0.0
        self.report.y_max_abs = max(self.report.y_max_abs or 0.0, largest)

    def _add_distribution_rows(self, y: np.ndarray, offset: int) -> None:
        """Check each row of a ``(n, C)`` target matrix as a distribution over the C classes: floating rows, or
        integer (one-hot) rows when the caller's ``num_classes`` is C."""
        classes = y.shape[1] if y.ndim == 2 else 0
        candidate = classes >= 2 and (y.dtype.kind == "f" and self.num_classes in (None, classes)
                                      or y.dtype.kind in "iu" and self.num_classes == classes)
        if not candidate:
            self.matrix = False
            return
        values = y.astype(np.float64, copy=False)
        finite = np.isfinite(values).all(axis=1)
        negative = finite & (np.where(np.isfinite(values), values, 0.0) < 0).any(axis=1)
        sums = np.where(np.isfinite(values), values, 0.0).sum(axis=1)
        epsilon = np.finfo(y.dtype).eps if y.dtype.kind == "f" else 0.0
        off_sum = finite & ~negative & (np.abs(sums - 1.0) > max(ROW_SUM_TOLERANCE, classes * epsilon))
        self.target_rows += len(y)
        self.distribution_rows += int((finite & ~negative & ~off_sum).sum())
        self.negative_rows += (offset + np.flatnonzero(negative)).tolist()
        self.off_sum_rows += (offset + np.flatnonzero(off_sum)).tolist()
        self.off_sums += sums[off_sum].tolist()

    def _targets(self) -> str | None:
        if not self.saw_targets:
            return None
        if self.matrix and 2 * self.distribution_rows > self.target_rows:  # most rows are distributions
            return DISTRIBUTIONS
        return CLASS_IDS if self.class_ids else REGRESSION

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
        report.targets = self._targets()
        if report.targets == DISTRIBUTIONS:
            self._distribution_findings()
        elif report.targets == CLASS_IDS:
            for text, indices in self.label_samples.items():
                if text == "non-finite labels":
                    continue  # listed above, as non-finite targets
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

    def _distribution_findings(self) -> None:
        """One-hot or soft targets: name the rows that are not distributions (non-finite ones are listed already)."""
        report = self.report
        if self.negative_rows:
            report.findings.append(f"target rows with negative entries in samples {listed(self.negative_rows)}")
        if self.off_sum_rows:
            sums = ", ".join(f"{value:.3g}" for value in self.off_sums[:MAX_LISTED])
            more = " …" if len(self.off_sums) > MAX_LISTED else ""
            report.findings.append(f"target rows not summing to 1 in samples {listed(self.off_sum_rows)} "
                                   f"(sums {sums}{more})")
        report.bad_target_rows = sorted(set(self.negative_rows) | set(self.off_sum_rows) | set(self.nonfinite_labels))


def _stream_framework(value):
    """The framework whose batch stream ``value`` is (a DataLoader, a tf.data.Dataset), or None for an array or a
    tensor. Only a value of a framework loads that framework's backend, so a NumPy scan imports none."""
    from nanlab.frameworks import framework_of

    framework = framework_of(value)
    return framework if framework is not None and framework.backend.is_batch_stream(value) else None


def _progress(stream, total: int | None, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(stream, total=total, desc="nanlab.scan", unit="batch", disable=not enabled)


def _split_batch(batch):
    if isinstance(batch, dict):
        raise NanlabError("scan streams need (x, y) or x batches, got a dict; map the dataset to (x, y) first")
    if isinstance(batch, (tuple, list)):
        if len(batch) not in (1, 2, 3):
            raise NanlabError(f"scan streams need (x,) or (x, y) batches, got a tuple of {len(batch)}")
        return batch[0], batch[1] if len(batch) > 1 else None
    return batch, None
