"""The one evidence vocabulary: what every framework's watch reports and every cause's rule reads.

A framework folder maps its native names onto these (``nanlab/frameworks/<name>/names.py``): torch's ``truediv`` and
TensorFlow's ``RealDiv`` are both the ``div`` family, torch's ``eps`` and Keras' ``epsilon`` both
``OptimizerFacts.eps``. Rules read only this module's names, never a framework's spelling (a test keeps it so), so a
rule written once holds for every framework, including one added later.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from enum import StrEnum


class Phase(StrEnum):
    """Where in a training step a value first went non-finite (a ``str``: ``Phase.LOSS == "loss"``)."""

    DATA = "data"
    FORWARD = "forward"
    LOSS = "loss"
    BACKWARD = "backward"
    OPTIMIZER = "optimizer update"


PHASES = tuple(phase.value for phase in Phase)


class OpFamily(StrEnum):
    """What an op computes, whatever a framework calls it; rules match on families, never on native names."""

    DIV = "div"                      # x / y, reciprocal, floor division
    LOG = "log"                      # log, log2, log10, log1p, xlogy
    PROBABILITY_LOSS = "probability-loss"  # a log loss on probabilities (binary cross-entropy on sigmoid outputs)
    LOGIT_LOSS = "logit-loss"        # a log loss on logits (cross-entropy with logits): stable by construction
    SQRT = "sqrt"
    RSQRT = "rsqrt"                  # 1 / sqrt(x): the inverse length inside normalisations
    POW = "pow"
    EXP = "exp"
    SOFTMAX = "softmax"              # softmax, log-softmax and the attention functions built on them
    NORM = "norm"                    # the length of a vector: norm, normalize
    NORMALIZATION = "normalization"  # layer/batch/group/RMS norm layers' ops
    STATISTIC = "statistic"          # std, var: spread over a selection (NaN for one element, unbiased)
    REDUCE = "reduce"                # sum, mean, max, min, prod, logsumexp
    MATMUL = "matmul"                # matmul, linear, conv
    TRIG = "trig"                    # sin, cos, tan
    INVERSE_TRIG = "inverse-trig"    # acos, asin, atanh: finite only inside their domain
    ELEMENTWISE = "elementwise"      # add, sub, mul, neg
    ACTIVATION = "activation"        # relu, sigmoid, tanh, gelu, softplus
    FILL = "fill"                    # writes a chosen value on purpose (masked_fill, where): -inf masks
    OTHER = "other"


def op_family(name: str | None, families: dict[str, OpFamily]) -> OpFamily | None:
    """The family of a native op ``name`` in a framework's table (keys lower-case, no surrounding underscores);
    ``OTHER`` for an op the table does not know, None for no op."""
    if not name:
        return None
    return families.get(name.strip("_").lower(), OpFamily.OTHER)


# The largest finite value of each floating dtype: what "past the dtype's range" means in a report.
DTYPE_MAX = {
    "float64": 1.7976931348623157e308,
    "float32": 3.4028234663852886e38,
    "bfloat16": 3.3895313892515355e38,
    "float16": 65504.0,
    "float8_e5m2": 57344.0,
    "float8_e4m3fn": 448.0,
}
HALF_PRECISION = ("float16", "bfloat16", "float8_e5m2", "float8_e4m3fn")  # the dtypes mixed precision computes in
# float8 formats that cannot hold inf: a value past the range saturates (e4m3fn's max) or, cast naively, turns NaN
SATURATING = ("float8_e4m3fn",)


def dtype_max(dtype: str | None) -> float | None:
    """The largest finite value of ``dtype`` (a canonical name: ``"float16"``), or None for a non-float dtype."""
    return DTYPE_MAX.get(dtype) if dtype else None


@dataclass
class InputStats:
    """One input of the failing op (forward, or the forward inputs of a backward culprit), as numbers a rule reads.

    ``min_abs`` is the smallest magnitude (0.0 when an exact zero is there), ``max_abs`` the largest finite one;
    ``min``/``max`` the finite range; the counts are over the whole tensor. None where the tensor has no finite
    value.
    """

    dtype: str
    size: int = 0
    zeros: int = 0
    negatives: int = 0
    nonfinite: int = 0
    min: float | None = None
    max: float | None = None
    min_abs: float | None = None
    max_abs: float | None = None

    @classmethod
    def from_dict(cls, values: dict) -> "InputStats":
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


@dataclass
class ActivationMax:
    """One module's (layer's) outputs in the replay of the bad step: how close they came to their dtype's limit.

    ``max_abs`` is the largest finite |value| the module output (over every call in the step; None when none was
    finite), ``nonfinite`` how many of its output values were not finite, ``dtype`` the outputs' canonical dtype.
    The approach to an overflow, not only the crossing: a module at 1e4 in float16 is 15% of the way to 65504.
    """

    module: str
    dtype: str
    max_abs: float | None = None
    nonfinite: int = 0

    @property
    def limit(self) -> float | None:
        """The largest finite value of the outputs' dtype (None for a dtype outside ``DTYPE_MAX``)."""
        return dtype_max(self.dtype)

    @property
    def fraction(self) -> float | None:
        """``max_abs`` as a fraction of the dtype's limit (None where either is unknown)."""
        limit = self.limit
        return self.max_abs / limit if self.max_abs is not None and limit else None

    def merged(self, other: "ActivationMax") -> "ActivationMax":
        """This module's record and another call's: the larger maximum, the larger count."""
        largest = [value for value in (self.max_abs, other.max_abs) if value is not None]
        return ActivationMax(self.module, self.dtype, max(largest) if largest else None,
                             max(self.nonfinite, other.nonfinite))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ActivationMax":
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


@dataclass
class OptimizerFacts:
    """The optimizer of the failing step, in one vocabulary (each framework maps its own names onto these fields).

    ``kind`` is the class name (``AdamW``, ``SGD``); ``betas`` Adam's (beta1, beta2); ``param_dtype`` the dtype of
    the parameters it updates, ``master_dtype`` that of a float32 master copy where one is kept; ``loss_scale`` the
    loss scaler's scale at the step. ``decoupled_weight_decay`` says whether the decay is applied to the weights
    directly (AdamW, every Keras optimizer: each weight shrinks by ``learning_rate * weight_decay`` per step) or added
    to the gradient of an adaptive optimizer (torch's Adam, RMSprop: rescaled by its denominator, no fixed factor);
    None where that does not matter (plain SGD, whose coupled decay is the same factor) or is unknown. None where the
    optimizer has no such setting.
    """

    kind: str
    learning_rate: float | None = None
    weight_decay: float | None = None
    eps: float | None = None
    momentum: float | None = None
    betas: tuple[float, float] | None = None
    param_dtype: str | None = None
    master_dtype: str | None = None
    loss_scale: float | None = None
    decoupled_weight_decay: bool | None = None

    @property
    def decay_per_step(self) -> float | None:
        """The fraction of each weight that decoupled weight decay removes per step (``lr * weight_decay``)."""
        if self.learning_rate is None or self.weight_decay is None:
            return None
        return self.learning_rate * self.weight_decay

    def to_dict(self) -> dict:
        return {name: (list(value) if isinstance(value, tuple) else value) for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "OptimizerFacts":
        values = {f.name: values[f.name] for f in fields(cls) if f.name in values}
        if values.get("betas") is not None:
            values["betas"] = tuple(values["betas"])
        return cls(**values)


def finite_or_none(value: float | None) -> float | None:
    """``value`` when it is a finite number, else None (how the vocabulary spells "not available")."""
    return value if value is not None and math.isfinite(value) else None
