"""Replay of one failed TensorFlow/Keras step, to say where it went non-finite and which samples carry it.

Loaded by the watch only when a step goes bad, and the only module of nanlab that touches TensorFlow's and Keras'
private APIs: the eager op-callback hook that ``tf.debugging.enable_check_numerics`` is built on
(``tensorflow.python.framework.op_callbacks``), used so that ops which write -inf on purpose (masks) can be passed
over and an op's inputs inspected, and ``Layer._flatten_layers``, to reach every nested layer. A release that moves
them breaks localisation, never training with the watch attached.

The step runs again eagerly (every ``tf.function`` too, XLA included) from the variables saved before it, under
each layer's own dtype policy (mixed precision replays in float16) and with the loss scaled as the optimizer scaled
it: the batch is checked for non-finite values and out-of-range class labels, then the forward pass layer by layer
with every op watched, the loss, the gradients, and finally the optimizer's update.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tensorflow.python.framework import op_callbacks

from nanlab.evidence import HUGE_TARGET_SCALE, label_problem, listed, symmetric_labels
from nanlab.frameworks.tensorflow.backend import keras, tf
from nanlab.frameworks.tensorflow.watch import HALF_RANGES, FailedStep, are_class_ids, variable_path
from nanlab.report import NonFiniteReport, is_recurrent

# Ops that write -inf on purpose (attention masks): their output is not a fault, what consumes it may be.
FILL_OPS = {"SelectV2", "Select", "Fill", "TensorScatterUpdate"}
LOSS_PATH = "loss"
LABELS_NOTE = "TensorFlow raises on such labels on CPU, and returns NaN on GPU or under XLA."


def replay(step: FailedStep) -> NonFiniteReport:
    """Fill ``step.report`` by replaying the step eagerly; the caller restores the variables afterwards."""
    eager = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    try:
        _replay(step)
    finally:
        tf.config.run_functions_eagerly(eager)
    return step.report


@dataclass
class BadOp:
    """The first op that turned good inputs into NaN/Inf, with the layer running it and the rows it spoiled."""

    op: str
    value: str
    inputs: list[dict]
    dtype: str
    layer: object | None
    rows: list[int]
    occurrence: int = 0  # how many ops of this type its layer ran before it (to find it again in float32)


def _replay(step: FailedStep) -> None:
    report, x, y = step.report, step.x, step.y
    batch = _batch_size(x)
    report.batch_size = batch
    report.input_max_abs = _input_max_abs(x)
    if _is_tensor(y):
        report.symmetric_labels = symmetric_labels(y, ignore_index=None)
        if y.dtype.is_floating:
            report.huge_targets = float(tf.reduce_max(tf.abs(tf.cast(y, tf.float64)))) > HUGE_TARGET_SCALE
    bad_rows = _nonfinite_rows(tf.nest.flatten(x) + tf.nest.flatten(y), batch)
    if bad_rows:
        report.phase, report.samples = "data", bad_rows
        report.data_findings = [f"non-finite values in samples {listed(bad_rows)}"]
        return
    if step.forward is None:
        report.note = "Watch a keras.Model or a callable tf.Module to localise the op (a list of variables has no " \
                      "forward pass to replay)."
        return

    layers = list(step.model._flatten_layers(include_self=False)) if isinstance(step.model, keras.Layer) else []
    tracer = _LayerTracer(layers, batch)
    forward, targets = _forward_and_targets(step)
    with tf.GradientTape() as tape:
        tape.watch([t for t in targets if isinstance(t, tf.Tensor)])  # values under tf.distribute
        with tracer, _OpRecorder(tracer, batch) as forward_ops:
            y_pred = forward(x)
        problem = _label_problem(y, y_pred)
        if problem is not None:
            report.phase, report.label_problem, report.samples = "data", problem[0], problem[1]
            report.data_findings, report.note = [problem[0]], LABELS_NOTE
            return
        loss = None
        if step.compute_loss is not None and y is not None:
            with _OpRecorder(None, batch) as loss_ops:
                loss = step.compute_loss(x, y, y_pred, step.sample_weight)
            scaled_loss = step.scale_loss(loss)

    if forward_ops.found is not None or tracer.culprit is not None:
        _fill_forward(report, step.model, forward_ops.found, tracer)
    elif loss is not None and not _finite(loss):
        report.phase, report.module = "loss", LOSS_PATH
        if loss_ops.found is not None:
            _fill_op(report, loss_ops.found)
        report.samples = [i for i in range(batch) if not _finite(step.compute_loss(
            _row(x, i, batch), _row(y, i, batch), _row(y_pred, i, batch), None))]
    if loss is None:
        return
    gradients = tape.gradient(scaled_loss, targets)
    bad = [v for v, g in zip(step.trainable, gradients) if g is not None and not _finite(g)]
    if bad:
        report.parameter = variable_path(bad[-1], step.model)  # backprop reaches the last layer's variables first
        if report.phase not in ("forward", "loss"):
            report.phase, report.module = "backward", report.parameter.rsplit("/", 1)[0]
            with tf.GradientTape() as again:
                again.watch([t for t in targets if isinstance(t, tf.Tensor)])
                again_loss = step.scale_loss(step.compute_loss(x, y, forward(x), step.sample_weight))
            with _OpRecorder(None, batch) as backward_ops:
                again.gradient(again_loss, targets)
            if backward_ops.found is not None:
                _fill_op(report, backward_ops.found)
                if report.dtype is not None:
                    report.max_abs = max((entry["max_abs"] for entry in report.op_inputs), default=None)
    elif report.phase not in ("forward", "loss") and targets is step.trainable:
        step.apply(gradients, step.trainable)
        updated_bad = [v for v in step.trainable if not _finite(v)]
        report.phase, report.module, report.op = "optimizer update", step.optimizer_name, "apply_gradients"
        report.parameter = variable_path(updated_bad[0], step.model) if updated_bad else None
    report.recurrent = report.recurrent or is_recurrent(report.module) or is_recurrent(report.parameter)


def _forward_and_targets(step: FailedStep):
    """The forward pass and what to differentiate against: the variables; or, under a tf.distribute strategy with
    several replicas (whose variables refuse a tape outside a replica), their current values, passed through
    Keras' ``stateless_call``."""
    strategy = tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync == 1 or not isinstance(step.model, keras.Model):
        return step.forward, step.trainable
    model = step.model
    trainable = [tf.convert_to_tensor(v.value) for v in model.trainable_variables]
    non_trainable = [tf.convert_to_tensor(v.value) for v in model.non_trainable_variables]

    def forward(x):
        return model.stateless_call(trainable, non_trainable, x, training=True)[0]
    return forward, trainable


def _fill_forward(report: NonFiniteReport, model, found: BadOp | None, tracer: "_LayerTracer") -> None:
    report.phase = "forward"
    layer = found.layer if found is not None and found.layer is not None else (
        tracer.culprit[0] if tracer.culprit is not None else None)
    report.module = _layer_path(layer, model) if layer is not None else getattr(model, "name", None)
    if found is not None:
        _fill_op(report, found)
    if tracer.culprit is not None and tracer.culprit[0] is layer:
        report.samples = tracer.culprit[3]
    elif found is not None:
        report.samples = found.rows
    if layer is not None:
        report.module_kind = type(layer).__name__
        report.recurrent = is_recurrent(type(layer).__name__)
        if report.dtype is not None and found is not None and tracer.culprit is not None and \
                tracer.culprit[0] is layer:
            report.max_abs = _magnitude_in_float32(layer, *tracer.culprit[1:3], found)


def _fill_op(report: NonFiniteReport, found: BadOp) -> None:
    report.op, report.value, report.op_inputs = found.op, found.value, found.inputs
    if found.dtype in HALF_RANGES:
        report.dtype, report.dtype_max = found.dtype, HALF_RANGES[found.dtype]


def _label_problem(y, y_pred):
    if not are_class_ids(y, y_pred):
        return None
    return label_problem(y, int(y_pred.shape[-1]), ignore_index=None)  # Keras has no padding label


class _LayerTracer:
    """While active, every layer's ``call`` checks its output: the first finite-in, non-finite-out layer is kept.

    ``stack`` holds the layers whose ``call`` is running, innermost last, so that an op can be given its layer.
    """

    def __init__(self, layers: list, batch: int):
        self.layers, self.batch = layers, batch
        self.stack: list = []
        self.checking = False
        self.culprit = None

    def __enter__(self):
        for layer in self.layers:
            layer.__dict__["call"] = self._wrap(layer, layer.call)
        return self

    def __exit__(self, *exc):
        for layer in self.layers:
            layer.__dict__.pop("call", None)

    def _wrap(self, layer, call):
        def traced(*args, **kwargs):
            self.stack.append(layer)
            try:
                output = call(*args, **kwargs)
            finally:
                self.stack.pop()
            if self.culprit is None:
                self.checking = True  # the checks below are TensorFlow ops: the op recorder ignores them
                outputs = _floats(tf.nest.flatten(output))
                bad = [t for t in outputs if not _finite(t)]
                if bad and _turned_bad([t.numpy() for t in bad],
                                       [t.numpy() for t in _floats(tf.nest.flatten((args, kwargs)))]):
                    self.culprit = (layer, args, kwargs, _nonfinite_rows(bad, self.batch))
                self.checking = False
            return output
        return traced


class _OpRecorder:
    """While active, watches every eager op and keeps the first that turned good inputs into NaN/Inf (``found``).

    The callback reads tensors with NumPy only: running TensorFlow ops inside it would call it again.
    """

    def __init__(self, tracer: _LayerTracer | None, batch: int):
        self.tracer, self.batch = tracer, batch
        self.found: BadOp | None = None
        self.counts: dict[tuple[int, str], int] = {}

    def __enter__(self):
        op_callbacks.add_op_callback(self._callback)
        return self

    def __exit__(self, *exc):
        op_callbacks.remove_op_callback(self._callback)

    def _callback(self, op_type, inputs, attrs, outputs, op_name=None, graph=None):
        if self.found is not None or graph is not None or op_type in FILL_OPS or (self.tracer and
                                                                                   self.tracer.checking):
            return None
        layer = self.tracer.stack[-1] if self.tracer and self.tracer.stack else None
        occurrence = self.counts.get((id(layer), op_type), 0)
        self.counts[id(layer), op_type] = occurrence + 1
        floats = [t for t in outputs or () if hasattr(t, "numpy") and t.dtype.is_floating]
        outs = [t.numpy() for t in floats]
        bad = [i for i, a in enumerate(outs) if not np.isfinite(a).all()]
        ins = [t.numpy() for t in inputs or () if hasattr(t, "numpy") and t.dtype.is_floating]
        if bad and _turned_bad([outs[i] for i in bad], ins):
            first = outs[bad[0]]
            rows = sorted(set(np.nonzero(~np.isfinite(first.reshape(first.shape[0], -1)))[0].tolist())) \
                if first.ndim and first.shape[0] == self.batch else []
            self.found = BadOp(op_type.lower(), _kind(first), [_stats(a) for a in ins], floats[bad[0]].dtype.name,
                               layer, rows, occurrence)
        return None


def _magnitude_in_float32(layer, args, kwargs, found: BadOp) -> float | None:
    """How far past its half type's range the failing op really went: ``layer`` runs again from the same inputs
    with every sublayer in float32, and the same op (the same occurrence of its type in that layer) is read. None
    when the layer cannot run in float32, or its op overflows float32 too."""
    layers = [layer] + list(layer._flatten_layers(include_self=False))
    policies = [sublayer.dtype_policy for sublayer in layers]
    as_float32 = tf.nest.map_structure(lambda t: tf.cast(t, tf.float32) if _is_tensor(t) and t.dtype.is_floating
                                       else t, (args, kwargs))
    seen: list[np.ndarray] = []

    def callback(op_type, inputs, attrs, outputs, op_name=None, graph=None):
        if graph is None and op_type.lower() == found.op and not tracer.checking and tracer.stack and \
                tracer.stack[-1] is layer:
            seen.extend(np.abs(t.numpy()) for t in outputs or () if hasattr(t, "numpy") and t.dtype.is_floating)
        return None

    tracer = _LayerTracer(layers, batch=-1)
    try:
        for sublayer in layers:
            sublayer.dtype_policy = "float32"
        op_callbacks.add_op_callback(callback)
        with tracer:
            layer(*as_float32[0], **as_float32[1])
    except (TypeError, ValueError, tf.errors.InvalidArgumentError):
        return None
    finally:
        op_callbacks.remove_op_callback(callback)
        for sublayer, policy in zip(layers, policies):
            sublayer.dtype_policy = policy
    if len(seen) <= found.occurrence or not np.isfinite(seen[found.occurrence]).all():
        return None
    return float(seen[found.occurrence].max()) if seen[found.occurrence].size else None


def _layer_path(layer, model) -> str:
    """``layer``'s path inside ``model`` (``block/attention``), without the model's own name."""
    path = getattr(layer, "path", None) or layer.name
    prefix = f"{getattr(model, 'name', '')}/"
    return path[len(prefix):] if path.startswith(prefix) else path


def _input_max_abs(x) -> float | None:
    """The largest finite |x| among the model's float inputs (the input scale); integer ids have no scale."""
    largest = [float(tf.reduce_max(tf.abs(tf.where(tf.math.is_finite(t), t, tf.zeros_like(t)))))
               for t in _floats(tf.nest.flatten(x)) if tf.size(t) > 0]
    return max(largest, default=None)


def _is_tensor(value) -> bool:
    return isinstance(value, (tf.Tensor, tf.Variable))


def _floats(values) -> list:
    return [t for t in values if _is_tensor(t) and t.dtype.is_floating]


def _finite(tensor) -> bool:
    return bool(tf.reduce_all(tf.math.is_finite(tensor)))


def _batch_size(x) -> int:
    return int(tf.nest.flatten(x)[0].shape[0])


def _row(structure, index: int, batch: int):
    """Row ``index`` of every batch-sized tensor in ``structure``."""
    return tf.nest.map_structure(lambda t: t[index:index + 1] if _is_tensor(t) and t.shape.rank and
                                 t.shape[0] == batch else t, structure)


def _turned_bad(outputs: list[np.ndarray], inputs: list[np.ndarray]) -> bool:
    """True when this is where it went wrong: NaN out of NaN-free inputs, or Inf out of finite ones."""
    if any(np.isnan(a).any() for a in outputs):
        return not any(np.isnan(a).any() for a in inputs)
    return all(np.isfinite(a).all() for a in inputs)


def _kind(array: np.ndarray) -> str:
    if np.isnan(array).any():
        return "nan"
    return "-inf" if (array == -np.inf).any() else "inf"


def _stats(array: np.ndarray) -> dict:
    """What a rule may ask of an op's input: any exact 0, any negative, the largest finite magnitude."""
    finite = np.abs(array[np.isfinite(array)])
    return {"zeros": bool((array == 0).any()), "negatives": bool((array < 0).any()),
            "max_abs": float(finite.max()) if finite.size else 0.0}


def _nonfinite_rows(tensors, batch: int) -> list[int]:
    rows: set[int] = set()
    for tensor in _floats(tensors):
        if tensor.shape.rank == 0 or tensor.shape[0] != batch:
            continue
        flat = tf.reshape(tf.convert_to_tensor(tensor), (batch, -1))
        rows.update(tf.where(~tf.reduce_all(tf.math.is_finite(flat), axis=1))[:, 0].numpy().tolist())
    return sorted(rows)
