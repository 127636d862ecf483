"""Attention-logit growth: the attention's own product of queries and keys (or the attention function built on it)
overflowed a narrow dtype from finite inputs, inside a module that is an attention.

A narrower reading of the evidence than fp16-overflow's (which names any float16 result past the limit): the
failing op is a matmul or a softmax-family op (``scaled_dot_product_attention`` is one), computed in a dtype whose
range ends at float16's or sooner, in the forward pass, inside a module whose path or kind says attention
(``attn``, ``attention``, ``mha``), every input finite, and its result past the limit (inf, or NaN from a softmax
over a row the attention computed internally). Those inputs are the queries and keys: their largest magnitudes are
the growth the reason states (one logit can reach ``max|q| * max|k| * d / sqrt(d)``).

The watch records no per-step attention-logit maxima, so the growth before the NaN is read from the failing
step's queries and keys (their magnitudes), not from a trajectory; the module's name is what places the op in an
attention, so a model that names its attention otherwise is left to fp16-overflow.
"""
from nanlab.causes.attention_logit_growth import CAUSE
from nanlab.diagnosis import DIRECT, Verdict, narrow_range, overflowed, range_limit
from nanlab.watching.vocabulary import OpFamily, Phase

ATTENTION_HINTS = ("attn", "attention", "mha")
ATTENTION_FAMILIES = {OpFamily.MATMUL, OpFamily.SOFTMAX}
# More specific than fp16-overflow's DIRECT: where the overflow happened (inside the attention, in its q·k product)
# names what grew. A little above fp16-norm-overflow's, which never reads a matmul.
SPECIFIC = 0.04


def in_attention(report) -> bool:
    """The failing op ran inside a module whose path or kind names an attention."""
    names = f"{report.module or ''} {report.module_kind or ''}".lower()
    return any(hint in names for hint in ATTENTION_HINTS)


def diagnose(report) -> Verdict | None:
    if report.phase != Phase.FORWARD or report.op_family not in ATTENTION_FAMILIES or not narrow_range(report):
        return None
    if not in_attention(report) or not report.op_inputs or any(entry.nonfinite for entry in report.op_inputs):
        return None
    limit = range_limit(report)
    result_overflowed = report.value in ("inf", "-inf") or overflowed(report)
    fused_nan = report.op_family == OpFamily.SOFTMAX and report.value == "nan"  # an attention function's inside
    if not (result_overflowed or fused_nan):
        return None
    largest = [entry.max_abs for entry in report.op_inputs if entry.max_abs is not None]
    inputs = (f" from queries and keys of at most {' and '.join(f'{value:.4g}' for value in largest[:2])}"
              if largest else "")
    where = f"`{report.op}` in `{report.module or report.module_kind}`"
    return Verdict(CAUSE.id, DIRECT + SPECIFIC,
                   f"{where} computed the attention logits in {report.dtype} and gave {report.value}{inputs}: the "
                   f"logits q·k grow like the product of the query and key weights, here past {report.dtype}'s "
                   f"{limit:.6g}; normalise the queries and keys (QK-layernorm) or lower the rate on them",
                   ("phase", "op_family", "module", "dtype", "op_inputs", "value"))
