"""torch's names -> the evidence vocabulary (``nanlab.watching.vocabulary``): op families, optimizer facts, dtypes.

The replay reports an op by the name torch gives it (``report.op``: ``log``, ``linalg_vector_norm``, ``linear``);
``OP_FAMILIES`` says what that op computes (``report.op_family``), which is what the causes' rules read. The keys are
torch's names as the replay spells them: a function's ``__name__`` without its surrounding underscores, lower-case
(``Tensor.__truediv__`` is ``truediv``; the replay reports it as ``div``, and both are here).

Also here, because every finiteness test and statistic on a torch tensor goes through it: ``checkable``, which
upcasts float8 tensors to float32 (torch 2.13 implements ``isnan`` for float8 on the CPU but not ``isfinite``,
``isinf``, ``max``, ``<`` or ``vector_norm``), so a float8 tensor never crashes the watch or the replay.
"""
from __future__ import annotations

import torch

from nanlab.watching.vocabulary import OpFamily, OptimizerFacts

_FAMILIES: dict[OpFamily, tuple[str, ...]] = {
    OpFamily.DIV: ("div", "divide", "true_divide", "truediv", "rtruediv", "rdiv", "floor_divide", "floordiv",
                   "rfloordiv", "reciprocal", "remainder", "fmod", "mod", "rmod", "addcdiv"),
    OpFamily.LOG: ("log", "log2", "log10", "log1p", "xlogy", "special_xlogy", "special_xlog1py", "logit",
                   "special_logit", "special_entr", "logdet", "slogdet", "logsigmoid"),
    OpFamily.PROBABILITY_LOSS: ("binary_cross_entropy", "kl_div", "poisson_nll_loss", "gaussian_nll_loss"),
    OpFamily.LOGIT_LOSS: ("cross_entropy", "binary_cross_entropy_with_logits", "soft_margin_loss",
                          "multilabel_soft_margin_loss"),
    OpFamily.SQRT: ("sqrt",),
    OpFamily.RSQRT: ("rsqrt",),
    OpFamily.POW: ("pow", "rpow", "float_power", "square"),
    OpFamily.EXP: ("exp", "exp2", "expm1", "special_expm1", "special_exp2", "sinh", "cosh", "ldexp"),
    OpFamily.SOFTMAX: ("softmax", "log_softmax", "softmin", "special_softmax", "special_log_softmax",
                       "gumbel_softmax", "scaled_dot_product_attention", "multi_head_attention_forward"),
    OpFamily.NORM: ("norm", "linalg_norm", "linalg_vector_norm", "linalg_matrix_norm", "frobenius_norm",
                    "nuclear_norm", "normalize", "renorm", "cdist", "pdist", "pairwise_distance",
                    "cosine_similarity", "dist"),
    OpFamily.NORMALIZATION: ("layer_norm", "native_layer_norm", "batch_norm", "native_batch_norm", "group_norm",
                             "native_group_norm", "instance_norm", "rms_norm", "local_response_norm"),
    OpFamily.STATISTIC: ("std", "var", "std_mean", "var_mean", "cov", "corrcoef"),
    OpFamily.REDUCE: ("sum", "mean", "nansum", "nanmean", "max", "min", "amax", "amin", "aminmax", "prod",
                      "cumsum", "cumprod", "logsumexp", "logcumsumexp", "special_logsumexp", "max_pool1d",
                      "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
                      "max_pool3d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d"),
    OpFamily.MATMUL: ("matmul", "rmatmul", "mm", "bmm", "mv", "dot", "vdot", "inner", "outer", "addmm", "addmv",
                      "addbmm", "baddbmm", "einsum", "tensordot", "linear", "bilinear", "conv1d", "conv2d",
                      "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "chain_matmul",
                      "linalg_multi_dot"),
    OpFamily.TRIG: ("sin", "cos", "tan"),
    OpFamily.INVERSE_TRIG: ("acos", "asin", "atan", "atan2", "arccos", "arcsin", "arctan", "arctan2", "acosh",
                            "asinh", "atanh", "arccosh", "arcsinh", "arctanh"),
    OpFamily.ELEMENTWISE: ("add", "radd", "iadd", "sub", "rsub", "isub", "subtract", "mul", "rmul", "imul",
                           "multiply", "neg", "negative", "abs", "addcmul", "lerp", "clamp", "clip", "sign"),
    OpFamily.ACTIVATION: ("relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid",
                          "tanh", "softplus", "softsign", "hardtanh", "hardswish", "hardsigmoid", "prelu", "rrelu",
                          "glu", "threshold", "tanhshrink", "softshrink", "hardshrink"),
    OpFamily.FILL: ("masked_fill", "where", "fill", "full", "full_like", "index_fill", "masked_scatter",
                    "fill_diagonal"),
}
OP_FAMILIES: dict[str, OpFamily] = {name: family for family, names in _FAMILIES.items() for name in names}

# float8 formats this torch knows (the e4m3fnuz/e5m2fnuz variants and e8m0 exist only in some releases)
FLOAT8 = frozenset(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                                      "float8_e5m2fnuz", "float8_e8m0fnu") if hasattr(torch, name))


def dtype_name(dtype: torch.dtype) -> str:
    """The canonical name of a torch dtype: ``"float16"``, ``"bfloat16"``, ``"float8_e4m3fn"``."""
    return str(dtype).removeprefix("torch.")


def dtype_kind(dtype: torch.dtype) -> str:
    """NumPy's dtype kind of a torch dtype (``"f"``, ``"c"``, ``"b"``, ``"u"``, ``"i"``), as
    ``nanlab.evidence.class_id_targets`` reads it."""
    if dtype.is_floating_point:
        return "f"
    if dtype.is_complex:
        return "c"
    if dtype == torch.bool:
        return "b"
    return "i" if dtype.is_signed else "u"


def checkable(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` detached, upcast to float32 when it is float8: what every finiteness test and statistic reads.

    A no-op (no copy) for every other dtype, so the per-step check is unchanged on them; float32 holds every float8
    value exactly, NaN and inf included.
    """
    tensor = tensor.detach()
    return tensor.float() if tensor.dtype in FLOAT8 else tensor


def _number(value) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# adaptive optimizers whose weight decay is added to the gradient and then divided by their running scale
ADAPTIVE_COUPLED_DECAY = frozenset({"RMSprop", "Adagrad", "Adadelta", "Adamax", "SparseAdam"})


def learning_rate(optimizer) -> float | None:
    """The rate the optimizer's next step takes (its first parameter group's ``lr``, which a scheduler sets before
    the step), or None without one."""
    groups = getattr(optimizer, "param_groups", None)
    rate = groups[0].get("lr") if groups else None
    if isinstance(rate, torch.Tensor) and rate.device.type != "cpu":
        return None  # reading a rate held on the device would cost a second host synchronisation per step
    return _number(rate)


def optimizer_facts(optimizer, params=None, scaler=None, loss_scale: float | None = None) -> OptimizerFacts | None:
    """The optimizer in the shared vocabulary (its first parameter group's settings), or None without one.

    ``lr`` -> ``learning_rate``; ``eps``, ``betas``, ``weight_decay``, ``momentum`` keep their meaning (None where the
    optimizer has no such setting). ``param_dtype`` is the dtype of ``params`` (the trainable parameters; the
    optimizer's own when not given); ``master_dtype`` stays None: a plain torch optimizer keeps no master copy.
    ``loss_scale`` is the scale the step used when the caller knows it, else the enabled ``scaler``'s current one.
    """
    if optimizer is None or not getattr(optimizer, "param_groups", None):
        return None
    group = optimizer.param_groups[0]
    betas = group.get("betas")
    betas = tuple(_number(beta) for beta in betas) if isinstance(betas, (tuple, list)) and len(betas) == 2 else None
    if params is None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
    params = list(params)
    if loss_scale is None and scaler is not None and scaler.is_enabled():
        loss_scale = float(scaler.get_scale())
    decoupled = group.get("decoupled_weight_decay")  # Adam, AdamW, NAdam, RAdam in torch 2.13
    if decoupled is None and type(optimizer).__name__ in ADAPTIVE_COUPLED_DECAY:
        decoupled = False
    return OptimizerFacts(kind=type(optimizer).__name__, learning_rate=_number(group.get("lr")),
                          weight_decay=_number(group.get("weight_decay")), eps=_number(group.get("eps")),
                          momentum=_number(group.get("momentum")),
                          betas=betas if betas is not None and None not in betas else None,
                          param_dtype=dtype_name(params[0].dtype) if params else None, loss_scale=loss_scale,
                          decoupled_weight_decay=decoupled)
