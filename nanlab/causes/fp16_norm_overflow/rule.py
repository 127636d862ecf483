"""float16 norm overflow: an op of a normalisation's statistics, computed in float16, overflowed on activations
that float16 holds.

A narrower reading of the evidence than fp16-overflow's (which names any float16 result past 65504): here the
failing op's inputs are all finite and below the dtype's limit, and the op is one that computes a statistic.

- a square: a power (``x ** 2``, ``square``), or a product of a tensor with itself (``x * x``: an elementwise op of
  two inputs whose statistics are identical), of values past sqrt(limit) (256 for float16) and at most half the
  limit (a sum ``x + x`` cannot overflow there, a product can), whose result overflowed;
- a reduction (the mean or sum of squares) of non-negative inputs below the limit whose result overflowed;
- a spread statistic (var, std) or a framework normalisation op of inputs past sqrt(limit) and below the limit
  whose result overflowed, or (a normalisation) became NaN: inf - inf inside its one-pass variance.

Forward phase only: a square in the loss (an MSE computed in float16) is a loss's overflow, left to fp16-overflow.
The rsqrt that follows the statistic never fails here (rsqrt(inf) = 0), so its family is not read: an rsqrt that
gives inf took a zero (zero-norm), one that gives NaN a negative number (sqrt-at-zero).

Reads ``report.dtype`` ("float16" in every framework) and its limit (``range_limit``: ``report.dtype_max``, else
the vocabulary's ``dtype_max``).
"""
import math

from nanlab.causes.fp16_norm_overflow import CAUSE
from nanlab.diagnosis import DIRECT, Verdict, overflowed, range_limit
from nanlab.watching.vocabulary import OpFamily, Phase

FLOAT16 = "float16"
SQUARE_FAMILIES = {OpFamily.POW}
SELF_PRODUCT_FAMILIES = {OpFamily.ELEMENTWISE}
REDUCE_FAMILIES = {OpFamily.REDUCE}
STATISTIC_FAMILIES = {OpFamily.STATISTIC, OpFamily.NORMALIZATION}
# More specific than fp16-overflow's DIRECT: the overflow is in a statistic of values float16 holds. A reduction of
# non-negative values is a little less specific than a square (a sum-pool of ReLU outputs is one too).
SPECIFIC = 0.03
REDUCE_SPECIFIC = 0.015


def _result_overflowed(report) -> bool:
    return report.value in ("inf", "-inf") or overflowed(report)


def _largest_input(report) -> float | None:
    """The largest finite magnitude among the op's inputs, or None when an input is non-finite or unrecorded."""
    if not report.op_inputs or any(entry.nonfinite for entry in report.op_inputs):
        return None
    magnitudes = [entry.max_abs for entry in report.op_inputs if entry.max_abs is not None]
    return max(magnitudes) if magnitudes else None


def _self_product(report) -> bool:
    """Two inputs with identical statistics: one tensor taken twice (``x * x``)."""
    if len(report.op_inputs) != 2:
        return False
    first, second = report.op_inputs
    return first == second


def diagnose(report) -> Verdict | None:
    if report.dtype != FLOAT16 or report.phase != Phase.FORWARD:
        return None
    limit, largest = range_limit(report), _largest_input(report)
    if limit is None or largest is None or largest > limit:
        return None  # an input already past the limit (or non-finite) is fp16-overflow's evidence
    root = math.sqrt(limit)
    where = f"`{report.op}`" if report.op else "an op"
    family = report.op_family
    squared = (family in SQUARE_FAMILIES or (family in SELF_PRODUCT_FAMILIES and _self_product(report)
                                             and largest <= limit / 2))
    if squared and largest > root and _result_overflowed(report):
        return Verdict(CAUSE.id, DIRECT + SPECIFIC, f"{where} squared float16 values of at most {largest:.4g} "
                       f"into {_overflow(report)}: past {root:.4g} a value fits float16 and its square does not, so "
                       "a statistic of squares (a LayerNorm's variance, an RMSNorm's mean of squares) is inf while "
                       "the activations are fine; compute it in float32", ("dtype", "op_family", "op_inputs", "value"))
    if family in REDUCE_FAMILIES and _result_overflowed(report) \
            and all(entry.negatives == 0 and (entry.min is None or entry.min >= 0) for entry in report.op_inputs):
        return Verdict(CAUSE.id, DIRECT + REDUCE_SPECIFIC, f"{where} summed non-negative float16 values (squares, as "
                       f"a norm's mean of squares sums them) of at most {largest:.4g} into {_overflow(report)}, past "
                       f"float16's {limit:.6g}; accumulate the statistics in float32",
                       ("dtype", "op_family", "op_inputs", "value"))
    if family in STATISTIC_FAMILIES and largest > root and (
            _result_overflowed(report) or (family == OpFamily.NORMALIZATION and report.value == "nan")):
        return Verdict(CAUSE.id, DIRECT + SPECIFIC, f"{where} computed a variance in float16 from values of at most "
                       f"{largest:.4g} and gave {report.value}: their squares pass {limit:.6g}; compute the "
                       "statistics in float32", ("dtype", "op_family", "op_inputs", "value"))
    return None


def _overflow(report) -> str:
    """The op's result: its magnitude recomputed in a wider dtype where the watch recorded one, else its value."""
    if report.max_abs is not None and report.max_abs > (range_limit(report) or math.inf):
        return f"{report.max_abs:.3g}"
    return report.value or "inf"
