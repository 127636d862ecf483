"""TensorFlow and Keras names mapped onto the shared evidence vocabulary (``nanlab.watching.vocabulary``).

Shared by the per-step watch and the replay (neither imports the other): the op families of TensorFlow's op types,
Keras' optimizer settings as ``OptimizerFacts``, canonical dtype names, a variable's path inside its model, and the
one question "are these targets class ids?" asked of ``nanlab.evidence.class_id_targets`` with Keras' conventions
(the classes on the last axis; floating targets are class ids only under a sparse categorical loss).
"""
from __future__ import annotations

import numpy as np

from nanlab.evidence import class_id_targets
from nanlab.frameworks.tensorflow.backend import keras, tf
from nanlab.watching.vocabulary import OpFamily, OptimizerFacts

_FAMILIES = {
    OpFamily.DIV: ("realdiv", "div", "divnonan", "floordiv", "truediv", "xdivy", "reciprocal", "inv",
                   "reciprocalgrad", "invgrad"),
    OpFamily.LOG: ("log", "log1p", "xlogy", "xlog1py"),
    OpFamily.LOGIT_LOSS: ("sparsesoftmaxcrossentropywithlogits", "softmaxcrossentropywithlogits"),
    OpFamily.SQRT: ("sqrt", "sqrtgrad"),
    OpFamily.RSQRT: ("rsqrt", "rsqrtgrad"),
    OpFamily.POW: ("pow", "square", "squareddifference"),
    OpFamily.EXP: ("exp", "expm1"),
    OpFamily.SOFTMAX: ("softmax", "logsoftmax"),
    OpFamily.NORM: ("euclideannorm", "l2loss"),
    OpFamily.NORMALIZATION: ("fusedbatchnorm", "fusedbatchnormv2", "fusedbatchnormv3", "fusedbatchnormgrad",
                             "fusedbatchnormgradv2", "fusedbatchnormgradv3", "batchnormwithglobalnormalization"),
    OpFamily.REDUCE: ("mean", "sum", "max", "min", "prod", "cumsum", "cumprod", "cumulativelogsumexp", "maxpool",
                      "maxpoolv2", "maxpool3d"),
    OpFamily.MATMUL: ("matmul", "batchmatmul", "batchmatmulv2", "batchmatmulv3", "conv", "conv1d", "conv2d",
                      "conv3d", "depthwiseconv2dnative", "conv2dbackpropinput", "conv2dbackpropfilter",
                      "conv3dbackpropinputv2", "conv3dbackpropfilterv2", "depthwiseconv2dnativebackpropinput",
                      "depthwiseconv2dnativebackpropfilter", "einsum"),
    OpFamily.TRIG: ("sin", "cos", "tan"),
    OpFamily.INVERSE_TRIG: ("acos", "asin", "atan", "atan2", "atanh", "acosh", "asinh"),
    OpFamily.ELEMENTWISE: ("add", "addv2", "addn", "sub", "mul", "mulnonan", "neg", "abs", "maximum", "minimum",
                           "biasadd", "biasaddgrad", "sign"),
    OpFamily.ACTIVATION: ("relu", "relu6", "elu", "selu", "leakyrelu", "sigmoid", "tanh", "softplus", "softsign",
                          "erf", "relugrad", "relu6grad", "elugrad", "selugrad", "leakyrelugrad", "sigmoidgrad",
                          "tanhgrad", "softplusgrad", "softsigngrad"),
    OpFamily.FILL: ("selectv2", "select", "fill", "tensorscatterupdate", "zeroslike", "oneslike"),
}
# TensorFlow's op types, lower-cased (the replay reports ``Exp`` as ``exp``), and its gradient ops (``SqrtGrad``,
# ``RsqrtGrad``, ``TanhGrad`` …) under the family of the op they differentiate.
OP_FAMILIES: dict[str, OpFamily] = {name: family for family, names in _FAMILIES.items() for name in names}
SPARSE_LOSS_NAMES = ("sparse_categorical_crossentropy", "sparsecategoricalcrossentropy")


def dtype_name(dtype) -> str:
    """The canonical name of a TensorFlow, Keras or NumPy dtype ("float16", "bfloat16", "float8_e4m3fn" …)."""
    try:
        return tf.as_dtype(dtype).name
    except TypeError:
        return str(getattr(dtype, "name", dtype))


def optimizer_facts(optimizer, variables=(), loss_scale: float | None = None) -> OptimizerFacts | None:
    """A Keras optimizer's settings in the shared vocabulary: ``learning_rate``, ``epsilon`` (``eps``), ``beta_1``
    and ``beta_2`` (``betas``), ``weight_decay``, ``momentum``; a ``LossScaleOptimizer`` is described by the
    optimizer it wraps, with its scale as ``loss_scale`` (the scale the step used, when given). ``param_dtype`` is
    the dtype of the first of ``variables`` (the ones it updates). None without an optimizer."""
    if optimizer is None:
        return None
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    beta_1, beta_2 = _number(getattr(inner, "beta_1", None)), _number(getattr(inner, "beta_2", None))
    if loss_scale is None and inner is not optimizer and getattr(optimizer, "built", False):
        loss_scale = _number(getattr(optimizer, "dynamic_scale", None))
    variables = list(variables)
    return OptimizerFacts(
        kind=type(inner).__name__, learning_rate=_number(getattr(inner, "learning_rate", None)),
        weight_decay=_number(getattr(inner, "weight_decay", None)), eps=_number(getattr(inner, "epsilon", None)),
        momentum=_number(getattr(inner, "momentum", None)),
        betas=(beta_1, beta_2) if beta_1 is not None and beta_2 is not None else None,
        param_dtype=dtype_name(variables[0].dtype) if variables else None, loss_scale=loss_scale,
        decoupled_weight_decay=True if getattr(inner, "weight_decay", None) is not None else None)  # Keras decouples


def _number(value) -> float | None:
    """A plain float from a Python number, a NumPy scalar, a tensor or a variable; None for anything else."""
    if value is None or isinstance(value, (bool, str)) or callable(value) and not hasattr(value, "dtype"):
        return None
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        return None
    if array.shape != () or array.dtype.kind not in "iuf":
        return None
    return float(array)


def variable_path(variable, model) -> str:
    """A variable's path inside ``model`` (``head/bias``), without the model's own name."""
    path = getattr(variable, "path", None) or variable.name.split(":")[0]
    prefix = f"{getattr(model, 'name', '')}/"
    return path[len(prefix):] if path.startswith(prefix) else path


def layer_path(layer, model) -> str:
    """``layer``'s path inside ``model`` (``block/attention``), without the model's own name."""
    path = getattr(layer, "path", None) or layer.name
    prefix = f"{getattr(model, 'name', '')}/"
    return path[len(prefix):] if path.startswith(prefix) else path


def is_sparse_loss(loss) -> bool:
    """Whether ``loss`` (a compiled loss: an object, a function, its name, or a list or dict of them; or a
    GradientTape loop's loss function) is a sparse categorical cross-entropy: the loss that reads floating targets
    as class ids."""
    if loss is None:
        return False
    if isinstance(loss, dict):
        return any(is_sparse_loss(value) for value in loss.values())
    if isinstance(loss, (list, tuple)):
        return any(is_sparse_loss(value) for value in loss)
    if isinstance(loss, str):
        return loss.lower().replace("_", "") in {name.replace("_", "") for name in SPARSE_LOSS_NAMES}
    if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        return True
    wrapped = getattr(loss, "python_function", None)  # a tf.function around the loss
    if wrapped is not None and wrapped is not loss:
        return is_sparse_loss(wrapped)
    names = (getattr(loss, "__name__", ""), getattr(getattr(loss, "fn", None), "__name__", ""), type(loss).__name__)
    return any(name.lower() in SPARSE_LOSS_NAMES for name in names if name)


def class_ids(y, y_pred, sparse_loss: bool) -> bool:
    """Whether targets ``y`` are class ids for the outputs ``y_pred`` (classes on the last axis), as
    ``nanlab.evidence.class_id_targets`` decides it: by the targets' dtype and the loss in use. Dimensions unknown
    while tracing (the batch) count as matching."""
    if not (_is_tensor(y) and _is_tensor(y_pred)) or y.shape.rank is None or y_pred.shape.rank is None:
        return False
    target, output = y.shape.as_list(), y_pred.shape.as_list()
    leading = output[:-1]
    for index in range(min(len(target), len(leading))):
        if target[index] is None or leading[index] is None:
            target[index] = leading[index] = -1
    kind = "b" if y.dtype == tf.bool else np.dtype(y.dtype.as_numpy_dtype).kind
    return class_id_targets(kind, tuple(target), tuple(leading + output[-1:]), class_axis=-1,
                            sparse_loss=sparse_loss)


def _is_tensor(value) -> bool:
    return isinstance(value, (tf.Tensor, tf.Variable))
