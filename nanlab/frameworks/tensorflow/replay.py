"""Replay of one bad TensorFlow/Keras step, to say where it went non-finite and which samples carry it.

Loaded by the watch only when a step goes bad. With ``private`` it is the only code of nanlab that touches
TensorFlow's and Keras' internals: the eager op-callback hook that ``tf.debugging.enable_check_numerics`` is built
on (``tensorflow.python.framework.op_callbacks``), used so that ops which write -inf on purpose (masks) can be passed
over and an op's inputs inspected, and ``Layer._flatten_layers``, to reach every nested layer. A release that moves
them breaks localisation, never training with the watch attached (``private`` names what moved).

The step runs again eagerly (every ``tf.function`` too, XLA included) from the variables as the step began (the
watch held its update back and put back what its forward pass changed, and puts every variable back after the
replay), under each layer's own dtype policy (mixed precision replays in float16) and with the loss scaled as the
optimizer scaled it: the batch is checked for non-finite values and out-of-range class labels, then the forward pass
layer by layer with every op watched, the loss, the gradients, and finally the optimizer's update. A backward
culprit (a gradient op that turned finite values non-finite) is traced to the forward op whose gradient it computes:
its layer is the report's module, its inputs the report's ``op_inputs``.

A deliberate fill (``tf.where``/``SelectV2`` writing -inf or finfo.min: a mask) is no culprit, and is followed
(``FillTrail``), as in the PyTorch replay: a reduction (``Max``, ``MaxPool``) whose output is non-finite from a fill
reduced a group that was all fill, and is blamed when a later op turns that value into NaN; the report names the
fill's op (``filled_from``). Each layer's largest finite |output| is kept (``activation_maxima``). A list of
variables has no forward pass to replay: there the loss alone runs again, from the predictions and targets the
watch kept when the step called ``watch.loss_fn``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from nanlab.evidence import HUGE_TARGET_SCALE, label_problem, listed, symmetric_labels
from nanlab.frameworks.tensorflow import private
from nanlab.frameworks.tensorflow.backend import keras, tf
from nanlab.frameworks.tensorflow.names import OP_FAMILIES, class_ids, dtype_name, layer_path, variable_path
from nanlab.frameworks.tensorflow.records import BadStep
from nanlab.report import NonFiniteReport, is_recurrent
from nanlab.watching.vocabulary import (DTYPE_MAX, HALF_PRECISION, ActivationMax, InputStats, OpFamily, Phase,
                                        op_family)

op_callbacks = private.op_callbacks()  # ImportError (PrivateAPIMoved) naming it when TensorFlow moved it

# Ops that write -inf on purpose (attention masks): their output is not a fault, what consumes it may be.
FILL_OPS = {name for name, family in OP_FAMILIES.items() if family == OpFamily.FILL}
# Forward ops a gradient passes through without computing from their inputs' values (a backward culprit is not theirs)
PASS_THROUGH = {OpFamily.ELEMENTWISE, OpFamily.FILL, None}
LOSS_PATH = "loss"
LABELS_NOTE = "TensorFlow raises on such labels on CPU, and returns NaN on GPU or under XLA."
MAX_ROW_REPLAYS = 256  # samples recomputed one at a time when the loss reduced over the batch


def localise(bad: BadStep, report: NonFiniteReport) -> None:
    """Fill ``report`` (made by the per-step check) by replaying the step eagerly; the watch puts the variables
    back afterwards."""
    eager = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    try:
        _replay(bad, report)
    finally:
        tf.config.run_functions_eagerly(eager)
    report.op_family = op_family(report.op, OP_FAMILIES)


@dataclass
class BadOp:
    """The first op that turned good inputs into NaN/Inf, with the layer running it and the rows it spoiled.

    In the backward pass, ``producer`` is the forward op whose gradient it computes (``ForwardRecord``)."""

    op: str
    value: str
    inputs: list[InputStats]
    dtype: str
    layer: object | None
    rows: list[int]
    occurrence: int = 0  # how many ops of this type its layer ran before it (to find it again in float32)
    producer: "ForwardOp | None" = None
    through_gradient: bool = False  # the producer was reached through other ops of its gradient
    in_loss: bool = False
    filled_from: str | None = None  # the op that wrote the fill this op turned non-finite (``FillTrail``)


@dataclass
class ForwardOp:
    """One op of a recorded forward pass: its type, the layer that ran it (None in the loss) and its tensors."""

    op: str
    layer: object | None
    inputs: list = field(default_factory=list)
    in_loss: bool = False


def _replay(step: BadStep, report: NonFiniteReport) -> None:
    x, y = step.x, step.y
    batch = _batch_size(x)
    report.batch_size = batch
    report.input_max_abs = _input_max_abs(x)
    if _is_tensor(y):
        report.symmetric_labels = symmetric_labels(y, ignore_index=None)
        if y.dtype.is_floating:
            report.huge_targets = float(tf.reduce_max(tf.abs(tf.cast(y, tf.float64)))) > HUGE_TARGET_SCALE
    bad_rows = _nonfinite_rows(tf.nest.flatten(x) + tf.nest.flatten(y), batch)
    if bad_rows:
        report.phase, report.samples = Phase.DATA, bad_rows
        report.label_problem = None
        report.data_findings = [f"non-finite values in samples {listed(bad_rows)}"]
        return
    if step.forward is None:
        if step.loss_inputs is not None and step.compute_loss is not None:
            _replay_loss_alone(step, report, batch)
            return
        report.note = "Watch a keras.Model or a callable tf.Module to localise the op (a list of variables has no " \
                      "forward pass to replay)."
        return

    layers, moved = private.flatten_layers(step.model) if isinstance(step.model, keras.Layer) else ([], None)
    if moved:
        report.note = moved
    tracer = _LayerTracer(layers, batch)
    fills = FillTrail(step.model)
    forward, targets = _forward_and_targets(step)
    with tf.GradientTape() as tape:
        tape.watch([t for t in targets if isinstance(t, tf.Tensor)])  # values under tf.distribute
        with tracer, _OpRecorder(tracer, batch, fills=fills) as forward_ops:
            y_pred = forward(x)
        problem = _label_problem(y, y_pred, step.sparse_loss)
        if problem is not None:
            report.phase, report.label_problem, report.samples = Phase.DATA, problem[0], problem[1]
            report.data_findings, report.note = [problem[0]], LABELS_NOTE
            return
        loss = None
        if step.compute_loss is not None and y is not None:
            with _OpRecorder(None, batch, in_loss=True, fills=fills) as loss_ops:
                loss = step.compute_loss(x, y, y_pred, step.sample_weight)
            scaled_loss = step.scale_loss(loss)

    report.activation_maxima = tracer.activation_maxima(step.model)
    found = forward_ops.found
    if found is None and tracer.culprit is None and loss is not None and not _finite(loss):
        # a fill made a value in the forward pass (an all-masked maximum) and turned NaN in the loss, or reached it
        late = loss_ops.found
        found = fills.escaped_into(loss) if late is None else late if not late.in_loss else None
    if found is not None or tracer.culprit is not None:
        _fill_forward(report, step.model, found, tracer)
    elif loss is not None and not _finite(loss):
        report.phase, report.module = Phase.LOSS, LOSS_PATH
        if loss_ops.found is not None:
            _fill_op(report, loss_ops.found)
        report.samples = [i for i in range(min(batch, MAX_ROW_REPLAYS)) if not _finite(step.compute_loss(
            _row(x, i, batch), _row(y, i, batch), _row(y_pred, i, batch), None))]
    if loss is None:
        return
    gradients = tape.gradient(scaled_loss, targets)
    bad = [v for v, g in zip(step.trainable, gradients) if g is not None and not _finite(g)]
    if bad:
        report.parameter = variable_path(bad[-1], step.model)  # backprop reaches the last layer's variables first
        if report.phase not in (Phase.FORWARD, Phase.LOSS):
            report.phase, report.module = Phase.BACKWARD, report.parameter.rsplit("/", 1)[0]
            _fill_backward(report, step, forward, targets, tracer, batch)
    elif report.phase not in (Phase.FORWARD, Phase.LOSS) and targets is step.trainable:
        step.apply(gradients, step.trainable)
        updated_bad = [v for v in step.trainable if not _finite(v)]
        report.phase, report.module, report.op = Phase.OPTIMIZER, step.optimizer_name, "apply_gradients"
        report.parameter = variable_path(updated_bad[0], step.model) if updated_bad else None
    report.recurrent = report.recurrent or is_recurrent(report.module) or is_recurrent(report.parameter)


def _fill_backward(report: NonFiniteReport, step: BadStep, forward, targets, tracer: "_LayerTracer",
                   batch: int) -> None:
    """Run forward and backward again, the forward recorded op by op, the backward watched: the first gradient op
    that turned finite values non-finite, traced to the forward op (and so the layer) whose gradient it computes."""
    record = ForwardRecord()
    with tf.GradientTape() as again:
        again.watch([t for t in targets if isinstance(t, tf.Tensor)])
        with tracer, _OpRecorder(tracer, batch, record=record):
            y_pred = forward(step.x)
        with _OpRecorder(None, batch, record=record, in_loss=True):
            again_loss = step.scale_loss(step.compute_loss(step.x, step.y, y_pred, step.sample_weight))
    with _OpRecorder(None, batch, record=ForwardRecord(), forward=record) as backward_ops:
        again.gradient(again_loss, targets)
    found = backward_ops.found
    if found is None:
        return
    _fill_op(report, found)
    if report.dtype is not None:
        report.max_abs = max((entry.max_abs for entry in found.inputs if entry.max_abs is not None), default=None)
    producer = found.producer
    if producer is not None and found.through_gradient:
        # a helper op of the producer's gradient (acos's Reciprocal of sqrt(1 - x**2)): the producer is the op whose
        # derivative went non-finite, as torch's replay names it
        report.op, report.op_family = producer.op, op_family(producer.op, OP_FAMILIES)
    if producer is not None:
        report.op_inputs = [_stats(t.numpy(), dtype_name(t.dtype)) for t in _floats(producer.inputs)]
        if producer.layer is not None:
            report.module = layer_path(producer.layer, step.model)
            report.module_kind = type(producer.layer).__name__
        elif producer.in_loss:
            report.module = LOSS_PATH
    report.samples = found.rows


def _forward_and_targets(step: BadStep):
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
    report.phase = Phase.FORWARD
    layer = found.layer if found is not None and found.layer is not None else (
        tracer.culprit[0] if tracer.culprit is not None else None)
    if found is not None and found.filled_from is not None:
        # where the fill was reduced or turned NaN (None: the model's own call), not the layer whose output showed it
        layer = found.layer
    report.module = layer_path(layer, model) if layer is not None else getattr(model, "name", None)
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


def _replay_loss_alone(step: BadStep, report: NonFiniteReport, batch: int) -> None:
    """A list of variables has no forward pass: replay the loss from the targets and predictions the step gave
    ``watch.loss_fn``, op by op, then its gradient with respect to the predictions."""
    y_true, y_pred = step.loss_inputs
    problem = _label_problem(y_true, y_pred, step.sparse_loss)
    if problem is not None:
        report.phase, report.label_problem, report.samples = Phase.DATA, problem[0], problem[1]
        report.data_findings, report.note = [problem[0]], LABELS_NOTE
        return
    report.note = "The loss was replayed alone, from the predictions the step gave watch.loss_fn (a list of " \
                  "variables has no forward pass to replay)."
    record = ForwardRecord()
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        with _OpRecorder(None, batch, record=record, in_loss=True) as loss_ops:
            loss = step.compute_loss(None, y_true, y_pred, None)
    if not _finite(loss):
        report.phase, report.module = Phase.LOSS, LOSS_PATH
        if loss_ops.found is not None:
            _fill_op(report, loss_ops.found)
        report.samples = [i for i in range(min(batch, MAX_ROW_REPLAYS)) if not _finite(step.compute_loss(
            None, _row(y_true, i, batch), _row(y_pred, i, batch), None))]
        return
    with _OpRecorder(None, batch, record=ForwardRecord(), forward=record) as backward_ops:
        tape.gradient(loss, y_pred)
    found = backward_ops.found
    if found is not None:
        report.phase, report.module = Phase.BACKWARD, LOSS_PATH
        _fill_op(report, found)
        if found.producer is not None:
            report.op, report.op_family = found.producer.op, op_family(found.producer.op, OP_FAMILIES)
            report.op_inputs = [_stats(t.numpy(), dtype_name(t.dtype)) for t in _floats(found.producer.inputs)]
        report.samples = found.rows


def _fill_op(report: NonFiniteReport, found: BadOp) -> None:
    report.op, report.value, report.op_inputs = found.op, found.value, found.inputs
    report.filled_from = found.filled_from
    report.op_family = op_family(found.op, OP_FAMILIES)
    if found.dtype in HALF_PRECISION:
        report.dtype, report.dtype_max = found.dtype, DTYPE_MAX[found.dtype]


def _label_problem(y, y_pred, sparse_loss: bool):
    if not class_ids(y, y_pred, sparse_loss) or y_pred.shape[-1] is None:
        return None
    return label_problem(y, int(y_pred.shape[-1]), ignore_index=None,  # Keras has no padding label
                         sparse_loss=sparse_loss)


class _LayerTracer:
    """While active, every layer's ``call`` checks its output: the first finite-in, non-finite-out layer is kept.

    ``stack`` holds the layers whose ``call`` is running, innermost last, so that an op can be given its layer.
    """

    def __init__(self, layers: list, batch: int):
        self.layers, self.batch = layers, batch
        self.stack: list = []
        self.checking = False
        self.culprit = None
        self.maxima: dict[int, tuple[object, ActivationMax]] = {}  # id(layer) -> (layer, its outputs' maximum)

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
            self._measure(layer, output)
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


    def _measure(self, layer, output) -> None:
        """Keep the layer's largest finite |output| (NumPy only: no op for the recorder to see)."""
        for tensor in _floats(tf.nest.flatten(output)):
            values = np.asarray(tensor.numpy(), dtype=np.float64)
            if not values.size:
                continue
            finite = np.isfinite(values)
            entry = ActivationMax("", dtype_name(tensor.dtype),
                                  float(np.abs(values[finite]).max()) if finite.any() else None,
                                  int(values.size - finite.sum()))
            known = self.maxima.get(id(layer))
            self.maxima[id(layer)] = (layer, known[1].merged(entry) if known else entry)

    def activation_maxima(self, model) -> list[ActivationMax]:
        """Each layer's largest finite |output| in the replay, named by its path, in the order the layers returned."""
        return [replace(entry, module=layer_path(layer, model)) for layer, entry in self.maxima.values()]


class FillTrail:
    """The tensors of one replay that carry a deliberate fill (a mask's -inf or finfo.min), shared by the recorders
    of the forward pass and the loss: for each, the op that wrote the fill (``"from"``) and the reduction that made
    a whole group of it a value (``"escape"``, a ``BadOp``, or None). The tensors are held, so no id is reused."""

    def __init__(self, model):
        self.model = model
        self.carriers: dict[int, dict] = {}
        self._held: list = []

    def carried(self, tensors) -> dict | None:
        """Of the fills ``tensors`` carry, one a reduction already made a value (x - max: the max's), else the
        first; None when they carry none."""
        carried = [self.carriers[id(t)] for t in tensors or () if id(t) in self.carriers]
        return next((entry for entry in carried if entry["escape"] is not None), carried[0] if carried else None)

    def mark(self, tensors, carried: dict) -> None:
        for tensor in tensors:
            self.carriers[id(tensor)] = carried
            self._held.append(tensor)

    def written_by(self, layer, op: str, in_loss: bool) -> str:
        where = LOSS_PATH if in_loss else layer_path(layer, self.model) if layer is not None else getattr(
            self.model, "name", "model")
        return f"`{where}` / op `{op}`"

    def escaped_into(self, loss) -> BadOp | None:
        """The reduction that made a fill a value which reached the non-finite loss without turning NaN on the way."""
        carried = self.carried([loss])
        if carried is None or carried["escape"] is None:
            return None
        return replace(carried["escape"], filled_from=carried["from"])


class ForwardRecord:
    """Every op of a forward pass, by the ids of the tensors it wrote and read (the tensors are held, so no id is
    reused while the record lives): what a backward op is traced back to."""

    def __init__(self):
        self.writers: dict[int, ForwardOp] = {}
        self.readers: dict[int, list[ForwardOp]] = {}
        self._held: list = []

    def add(self, entry: ForwardOp, outputs) -> None:
        self._held.append((entry, outputs))
        for tensor in outputs or ():
            self.writers[id(tensor)] = entry
        for tensor in entry.inputs:
            self.readers.setdefault(id(tensor), []).append(entry)

    def differentiated(self, gradient_op: str, inputs) -> ForwardOp | None:
        """The forward op whose gradient ``gradient_op`` computes. A ``...Grad`` op (``SqrtGrad``, ``TanhGrad``)
        reads that op's output first; any other (``RealDiv``, ``Reciprocal``, ``Mul``) reads that op's inputs: the
        op of the same family that read one of them (a division's for a division, a log's for a reciprocal), else
        the last op that read one, else the op that wrote one."""
        inputs = list(inputs or ())
        if gradient_op.endswith("grad") and inputs and id(inputs[0]) in self.writers:
            return self.writers[id(inputs[0])]
        family = OP_FAMILIES.get(gradient_op)
        wanted = {family} | ({OpFamily.LOG} if family == OpFamily.DIV else set())
        readers = [entry for tensor in inputs for entry in self.readers.get(id(tensor), [])]
        same = [entry for entry in readers if OP_FAMILIES.get(entry.op) in wanted]
        if same or readers:
            return (same or readers)[-1]
        return next((self.writers[id(t)] for t in inputs if id(t) in self.writers), None)

    def through_gradient(self, inputs, backward: "ForwardRecord") -> ForwardOp | None:
        """The forward op whose gradient computed ``inputs`` through other gradient ops (``backward``'s record): acos'
        derivative -g / sqrt(1 - x**2) is Square, Sub, Sqrt and Reciprocal of the forward input x. Walks back through
        the backward ops that wrote the inputs to the forward tensors they read, and returns the last forward op that
        read one and computes something (an elementwise op, a fill or an op no family names only passes it on)."""
        pending, seen = list(inputs or ()), set()
        while pending:
            tensor = pending.pop(0)
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            readers = self.readers.get(id(tensor), [])
            if readers:
                computing = [entry for entry in readers if OP_FAMILIES.get(entry.op) not in PASS_THROUGH]
                if computing:
                    return computing[-1]
                continue
            writer = backward.writers.get(id(tensor))
            if writer is not None:
                pending.extend(writer.inputs)
        return None


class _OpRecorder:
    """While active, watches every eager op and keeps the first that turned good inputs into NaN/Inf (``found``).

    With ``record`` (a ``ForwardRecord``), it also keeps every op it sees; given the ``forward`` record, a backward
    recorder traces its culprit to the forward op whose gradient it computes. The callback reads tensors with NumPy
    only: running TensorFlow ops inside it would call it again.
    """

    def __init__(self, tracer: _LayerTracer | None, batch: int, record: "ForwardRecord | None" = None,
                 in_loss: bool = False, forward: "ForwardRecord | None" = None, fills: FillTrail | None = None):
        self.tracer, self.batch, self.fills = tracer, batch, fills
        self.found: BadOp | None = None
        self.counts: dict[tuple[int, str], int] = {}
        self.record, self.in_loss, self.forward = record, in_loss, forward

    def __enter__(self):
        op_callbacks.add_op_callback(self._callback)
        return self

    def __exit__(self, *exc):
        op_callbacks.remove_op_callback(self._callback)

    def _callback(self, op_type, inputs, attrs, outputs, op_name=None, graph=None):
        if graph is not None or (self.tracer and self.tracer.checking):
            return None
        layer = self.tracer.stack[-1] if self.tracer and self.tracer.stack else None
        if self.record is not None:
            self.record.add(ForwardOp(op_type.lower(), layer, list(inputs or ()), self.in_loss), outputs)
        if self.found is not None:
            return None
        op = op_type.lower()
        carried = self.fills.carried(inputs) if self.fills is not None else None
        floats = [t for t in outputs or () if hasattr(t, "numpy") and t.dtype.is_floating]
        outs = [t.numpy() for t in floats]
        if op in FILL_OPS:
            if self.fills is not None and _holds_fill(outs):
                self.fills.mark(floats, {"from": self.fills.written_by(layer, op, self.in_loss),
                                         "escape": carried and carried["escape"]})
            return None
        occurrence = self.counts.get((id(layer), op_type), 0)
        self.counts[id(layer), op_type] = occurrence + 1
        bad = [i for i, a in enumerate(outs) if not np.isfinite(a).all()]
        float_inputs = [t for t in inputs or () if hasattr(t, "numpy") and t.dtype.is_floating]
        ins = [t.numpy() for t in float_inputs]
        if bad and _turned_bad([outs[i] for i in bad], ins):
            first = outs[bad[0]]
            rows = _rows(first, self.batch)
            producer = self.forward.differentiated(op, inputs) if self.forward is not None else None
            through = producer is None and self.forward is not None and self.record is not None
            if through:
                producer = self.forward.through_gradient(inputs, self.record)
            found = BadOp(op, _kind(first), [_stats(a, dtype_name(t.dtype)) for a, t in zip(ins, float_inputs)],
                          dtype_name(floats[bad[0]].dtype), layer, rows, occurrence, producer,
                          through_gradient=through and producer is not None, in_loss=self.in_loss)
            if carried is not None:  # a fill turned into NaN here, or in the reduction that made it a value
                found = replace(carried["escape"] or found, filled_from=carried["from"])
            self.found = found
        elif carried is not None and _holds_fill(outs):
            escape = carried["escape"]
            if escape is None and bad and OP_FAMILIES.get(op) == OpFamily.REDUCE:  # a group that was all fill
                escape = BadOp(op, _kind(outs[bad[0]]),
                               [_stats(a, dtype_name(t.dtype)) for a, t in zip(ins, float_inputs)],
                               dtype_name(floats[bad[0]].dtype), layer, _rows(outs[bad[0]], self.batch), occurrence,
                               in_loss=self.in_loss)
            self.fills.mark(floats, {"from": carried["from"], "escape": escape})
        return None


def _magnitude_in_float32(layer, args, kwargs, found: BadOp) -> float | None:
    """How far past its half type's range the failing op really went: ``layer`` runs again from the same inputs
    with every sublayer in float32, and the same op (the same occurrence of its type in that layer) is read. None
    when the layer cannot run in float32, or its op overflows float32 too."""
    layers = [layer] + private.flatten_layers(layer)[0]
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


# -- framework-neutral helpers on NumPy arrays (the PyTorch replay has the same ones) ------------------------------
def _turned_bad(outputs: list[np.ndarray], inputs: list[np.ndarray]) -> bool:
    """True when this is where it went wrong: NaN out of NaN-free inputs, or Inf out of finite ones."""
    if any(np.isnan(a).any() for a in outputs):
        return not any(np.isnan(a).any() for a in inputs)
    return all(np.isfinite(a).all() for a in inputs)


def _holds_fill(arrays: list[np.ndarray]) -> bool:
    """Some value is infinite or as large as its dtype allows (a finfo.min fill): a mask's fill value."""
    for array in arrays:
        if not array.size or array.dtype.kind != "f":
            continue
        finite = array[np.isfinite(array)]
        if np.isinf(array).any() or (finite.size and np.abs(finite).max() >= np.finfo(array.dtype).max / 2):
            return True
    return False


def _kind(array: np.ndarray) -> str:
    if np.isnan(array).any():
        return "nan"
    return "-inf" if (array == -np.inf).any() else "inf"


def _stats(array: np.ndarray, dtype: str) -> InputStats:
    """An op input as the numbers a rule reads (``InputStats``); None where the input has no finite value."""
    array = np.asarray(array)
    finite = array[np.isfinite(array)].astype(np.float64)
    magnitudes = np.abs(finite)
    some = finite.size > 0
    return InputStats(dtype=dtype, size=int(array.size), zeros=int(np.count_nonzero(array == 0)),
                      negatives=int(np.count_nonzero(array < 0)), nonfinite=int(array.size - finite.size),
                      min=float(finite.min()) if some else None, max=float(finite.max()) if some else None,
                      min_abs=float(magnitudes.min()) if some else None,
                      max_abs=float(magnitudes.max()) if some else None)


def _rows(array: np.ndarray, batch: int) -> list[int]:
    """The batch rows of ``array`` holding a non-finite value ([] when its first axis is not the batch)."""
    if not array.ndim or array.shape[0] != batch:
        return []
    return np.flatnonzero(~np.isfinite(array.reshape(batch, -1)).all(axis=1)).tolist()


def _nonfinite_rows(tensors, batch: int) -> list[int]:
    rows: set[int] = set()
    for tensor in _floats(tensors):
        rows.update(_rows(np.asarray(tensor), batch))
    return sorted(rows)
