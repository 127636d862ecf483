"""Replay of one bad PyTorch step, instrumented: the first op that went non-finite, the first bad gradient, the samples.

Loaded by ``watch.py`` only when a step goes bad (``localise``, the same entry point in every framework). It reaches
torch's private APIs only through ``nanlab.frameworks.torch.private`` (their one guarded home: here the
``TorchFunctionMode`` protocol); if a torch release moves one, ``localise`` raises ``PrivateAPIMoved`` (an
``ImportError``), and the watch still raises ``NonFiniteError`` with an unlocated report that says so.

The replay runs every micro-batch of the update again, from the weights the update started from (the check runs
before the update, and a step the loss scaler skipped changed nothing), with the RNG states (CPU and every CUDA
device) and autocast state each forward pass ran with, its positional and keyword inputs, and the loss function's
target and extra arguments (or the loss the model computed in ``forward``). Every op is observed through a
``TorchFunctionMode`` and every autograd node is hooked; the first op that turned finite inputs into a non-finite
output is the culprit. Its inputs are described as ``InputStats``, for a backward culprit those of the forward op
whose gradient went bad. The gradients, buffers and RNG states it touched are restored afterwards.

A deliberate fill (``masked_fill``/``where`` writing -inf or finfo.min: a mask) is no culprit, and is followed: every
tensor that still carries the fill value knows which op wrote it. A reduction (a max, a max-pool, a logsumexp) whose
output is non-finite from a fill reduced a group that was all fill (every token of a document masked): there the
fill stops being a mask and becomes a value, and that op is blamed when a later op turns the value into NaN (x - max,
the next layer's matmul); an op that turns a fill into NaN by itself (softmax over an all-masked row, 0 * inf,
finfo.min + finfo.min) is blamed where no reduction came first. The report names the fill's op (``filled_from``).
Each module's outputs are kept during the replay, and their largest finite magnitude is reported against the dtype's
limit (``activation_maxima``) once it is over.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
from typing import Any, Callable

import torch
from torch import nn

from nanlab.evidence import HUGE_TARGET_SCALE, class_id_targets, label_problem, listed, symmetric_labels
from nanlab.frameworks.torch import private
from nanlab.frameworks.torch.names import OP_FAMILIES, checkable, dtype_kind, dtype_name
from nanlab.frameworks.torch.records import BadStep, EagerOutcome, MicroBatch, loss_of
from nanlab.report import NonFiniteReport, is_recurrent
from nanlab.watching.vocabulary import ActivationMax, InputStats, OpFamily, Phase, dtype_max, op_family

LOSS_PATH = "loss"
# Ops that write -inf on purpose (attention masks): their output is not a fault, what consumes it may be.
FILL_OPS = frozenset(name for name, family in OP_FAMILIES.items() if family is OpFamily.FILL)
OP_ALIASES = {"truediv": "div", "rtruediv": "div", "div_": "div", "true_divide": "div", "rdiv": "div",
              "pow_": "pow", "rpow": "pow", "log_": "log", "exp_": "exp", "sqrt_": "sqrt"}
WIDER = {torch.float16: torch.float32, torch.bfloat16: torch.float64, torch.float32: torch.float64}  # wider range
MAX_ROW_REPLAYS = 256  # samples recomputed one at a time when the failing op reduced over the batch
# Statistics whose every output element reduces the same number of input elements (input size / output size)
GROUPED_STATISTICS = frozenset({"std", "var", "std_mean", "var_mean"})


def localise(bad: BadStep, report: NonFiniteReport) -> None:
    """Fill ``report`` (made by the per-step check) with the replay's evidence."""
    if not bad.micro_batches:
        report.note = "The watch saw no forward pass under autograd to replay."
        if private.compiled_module_class() is not None:
            report.note = _join(report.note, "If the model is torch.compile'd, give nanlab.watch the compiled module "
                                "(what torch.compile returned): hooks added to a module after it was compiled never "
                                "fire.")
        return
    mode = _mode_class(private.torch_function_mode())  # PrivateAPIMoved (an ImportError) when it is gone
    several = len(bad.micro_batches) > 1
    eager = EagerOutcome()
    for index, micro_batch in enumerate(bad.micro_batches):
        if _data_problem(micro_batch, bad, report) or _replay(micro_batch, bad, report, mode, eager):
            if several:
                report.micro_batch = index
                report.note = _join(report.note, f"Micro-batch {index} of the {len(bad.micro_batches)} in this "
                                                 "accumulated update carries it.")
            _describe_overflow(bad, report)
            _compare_compiled(bad, report, eager)
            return
    report.note = _join(report.note, "The eager replay of the original module stayed finite." if bad.compiled else
                        "The replay stayed finite: the step is not reproducible (non-deterministic ops?).")
    _compare_compiled(bad, report, eager)


def _compare_compiled(bad: BadStep, report: NonFiniteReport, eager: EagerOutcome) -> None:
    """A compiled model whose eager replay disagrees with the compiled step on whether the loss or the gradients are
    finite: the compiler is suspected, and the note shows both."""
    compiled = bad.compiled
    if compiled is None or report.phase == Phase.DATA or not eager.losses:
        return
    eager_loss = sum(eager.losses) / len(eager.losses)
    loss_differs = compiled.loss is not None and math.isfinite(compiled.loss) != math.isfinite(eager_loss)
    grads_differ = not math.isfinite(compiled.grad_norm) and not eager.grads_nonfinite and \
        len(eager.losses) == len(bad.micro_batches)  # every micro-batch replayed, none gave a non-finite gradient
    grads_differ = grads_differ or (math.isfinite(compiled.grad_norm) and eager.grads_nonfinite)
    if not (loss_differs or grads_differ):
        return
    compiled_loss = "unseen" if compiled.loss is None else f"{compiled.loss:g}"
    report.note = _join(report.note, (
        "The compiler is suspected: the compiled step and the eager replay of the original module disagree "
        f"(compiled: loss {compiled_loss}, gradient norm {compiled.grad_norm:g}; eager: loss {eager_loss:g}, "
        f"gradients {'non-finite' if eager.grads_nonfinite else 'finite'}). Run the step with "
        "torch.compile(backend=\"aot_eager\") or without compiling to confirm."))


# -- the data, before anything runs -----------------------------------------------------------------------------
def _data_problem(micro_batch: MicroBatch, bad: BadStep, report: NonFiniteReport) -> bool:
    """Non-finite inputs or targets: a data fault, with the samples that carry it."""
    batch = _batch_size((micro_batch.args, micro_batch.kwargs))
    report.batch_size = batch
    target = micro_batch.target
    tensors = _tensors((micro_batch.args, micro_batch.kwargs, micro_batch.loss_args, micro_batch.loss_kwargs))
    if isinstance(target, torch.Tensor):
        tensors.append(target)
        report.symmetric_labels = symmetric_labels(target, bad.ignore_index)
        if target.is_floating_point() and target.numel():
            report.huge_targets = bool(checkable(target).abs().max().item() > HUGE_TARGET_SCALE)
    report.input_max_abs = _input_max_abs(_tensors((micro_batch.args, micro_batch.kwargs)))
    rows = _nonfinite_rows(tensors, batch)
    if not rows:
        return False
    report.phase, report.samples = Phase.DATA, rows
    report.data_findings = [f"non-finite values in samples {listed(rows)}"]
    return True


def _check_labels(output, target, bad: BadStep, report: NonFiniteReport) -> bool:
    if not _class_ids(output, target, class_axis=1):
        return False
    problem = label_problem(target, output.shape[1], bad.ignore_index)
    if problem is None:
        return False
    report.phase, report.module, report.label_problem, report.samples = Phase.DATA, LOSS_PATH, problem[0], problem[1]
    report.op = getattr(bad.loss_fn, "__name__", type(bad.loss_fn).__name__)
    report.op_family = op_family(report.op, OP_FAMILIES)
    report.data_findings = [problem[0]]
    report.note = _join(report.note, "The watch handed the loss these labels as class 0, so the device never "
                        "indexed out of range (a CPU IndexError, a CUDA device-side assert).")
    return True


def _check_output_labels(output, micro_batch: MicroBatch, bad: BadStep, report: NonFiniteReport) -> bool:
    """A model that computes its loss in forward (``labels=`` keyword): check them against its logits (classes last,
    the Hugging Face convention)."""
    logits = output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
    labels = micro_batch.kwargs.get("labels")
    if not _class_ids(logits, labels, class_axis=-1):
        return False
    problem = label_problem(labels, logits.shape[-1], bad.ignore_index)
    if problem is None:
        return False
    report.phase, report.label_problem, report.samples = Phase.DATA, problem[0], problem[1]
    report.data_findings = [problem[0]]
    report.symmetric_labels = symmetric_labels(labels, bad.ignore_index)
    return True


# -- the replay --------------------------------------------------------------------------------------------------
def _replay(micro_batch: MicroBatch, bad: BadStep, report: NonFiniteReport, mode: type,
            eager: EagerOutcome) -> bool:
    """Replay one micro-batch instrumented; True when it located the fault (and filled ``report``). ``eager``
    gathers the loss and gradients it computed."""
    model, params = bad.module, bad.params
    batch = report.batch_size
    saved_grads = [p.grad for p in params]
    saved_buffers = [b.detach().clone() for b in model.buffers()]
    saved_cpu_rng = torch.get_rng_state()
    saved_cuda_rng = torch.cuda.get_rng_state_all() if micro_batch.cuda_rng is not None else None
    for p in params:
        p.grad = None
    tracer = mode(model, batch)
    loss = output = None
    try:
        _restore_rng(micro_batch.cpu_rng, micro_batch.cuda_rng)
        with _autocast(micro_batch.autocast), tracer:
            output, loss, located = _forward_and_loss(micro_batch, bad, report, tracer)
            if located:
                return True
            if tracer.culprit is None and loss is not None and not _finite(loss):
                tracer.culprit = tracer.escaped_into(loss)  # before the backward pass names a later op
        first_param = tracer.backward(loss * bad.scale if bad.scale else loss, params, bad.names) \
            if loss is not None else None
        if loss is not None:
            eager.losses.append(float(checkable(loss.detach()).double().mean()))
            eager.grads_nonfinite = eager.grads_nonfinite or first_param is not None
    finally:
        for p, grad in zip(params, saved_grads):
            p.grad = grad
        for buffer, value in zip(model.buffers(), saved_buffers):
            buffer.copy_(value)
        _restore_rng(saved_cpu_rng, saved_cuda_rng)

    report.activation_maxima = tracer.activation_maxima()
    found = tracer.culprit
    if found is None:
        return False
    report.phase, report.module, report.op = found["phase"], found["module"], found["op"]
    report.op_family = op_family(report.op, OP_FAMILIES)
    report.module_kind, report.value, report.op_inputs = found["kind"], found["value"], found["inputs"]
    report.samples, report.dtype, report.max_abs = found["rows"], found["dtype"], found["max_abs"]
    report.dtype_max = dtype_max(found["dtype"])
    report.filled_from, report.reduced_count = found.get("filled_from"), found.get("reduced_count")
    report.parameter = first_param
    if report.phase in (Phase.LOSS, Phase.FORWARD) and not report.samples and batch:
        report.samples = _bad_rows_one_by_one(micro_batch, bad, output, batch)
    report.recurrent = is_recurrent(report.module) or is_recurrent(first_param)
    return True


def _forward_and_loss(micro_batch: MicroBatch, bad: BadStep, report: NonFiniteReport, tracer) -> tuple:
    """Run one micro-batch's forward and loss under ``tracer``: ``(output, loss, located)``, ``located`` True when
    its labels are already the fault (``report`` filled)."""
    if micro_batch.step_fn is not None:
        # The host's whole step (Watch.record_step): ops outside the model's modules are the loss's.
        tracer.path = [(LOSS_PATH, "loss")]
        output = micro_batch.step_fn(*micro_batch.args, **micro_batch.kwargs)
        return output, loss_of(output), False
    output = bad.module(*micro_batch.args, **micro_batch.kwargs)
    tracer.path = [(LOSS_PATH, "loss")]
    if bad.loss_fn is not None and micro_batch.has_loss:
        if _check_labels(output, micro_batch.target, bad, report):
            return output, None, True
        return output, bad.loss_fn(output, micro_batch.target, *micro_batch.loss_args,
                                   **micro_batch.loss_kwargs), False
    if bad.loss_fn is None:
        if _check_output_labels(output, micro_batch, bad, report):
            return output, None, True
        return output, loss_of(output), False
    return output, None, False


def _describe_overflow(bad: BadStep, report: NonFiniteReport) -> None:
    """Persistent loss-scaler skipping: say which op left its dtype's range, and by how much."""
    if not bad.overflow:
        return
    steps = "step" if report.skipped_in_a_row == 1 else "steps"
    scaled = (f"the loss scaler skipped {report.skipped_in_a_row} {steps} in a row (loss scale "
              f"{report.loss_scale:.3g} at this step)")
    if report.dtype and report.dtype_max and report.module:
        reached = f"values up to {report.max_abs:.3g}" if report.max_abs is not None else "an infinite value"
        report.note = _join(report.note, f"fp16 overflow: {scaled}; `{report.module}` / op `{report.op}` produced "
                            f"{reached} in {report.dtype}, whose largest finite value is {report.dtype_max:.6g}.")
    else:
        report.note = _join(report.note, f"Overflow: {scaled}, and the replay did not locate the op.")


def _bad_rows_one_by_one(micro_batch: MicroBatch, bad: BadStep, output, batch: int) -> list[int]:
    """The samples whose own loss is non-finite: recomputed one row at a time (the failing op reduced the batch).

    Best effort: a step or a loss that cannot run on one row (it closes over batch-shaped tensors, such as group ids
    held outside the loss, or needs a whole group) names no samples; the report is complete without them."""
    def row_loss(i: int):
        if micro_batch.step_fn is not None:
            return loss_of(micro_batch.step_fn(*_row(micro_batch.args, i, batch), **_row(micro_batch.kwargs, i, batch)))
        if bad.loss_fn is not None and micro_batch.has_loss:
            return bad.loss_fn(_row(output, i, batch), _row(micro_batch.target, i, batch),
                               *_row(micro_batch.loss_args, i, batch), **_row(micro_batch.loss_kwargs, i, batch))
        if bad.loss_fn is None:
            return loss_of(bad.module(*_row(micro_batch.args, i, batch), **_row(micro_batch.kwargs, i, batch)))
        return None

    if bad.loss_fn is not None and not micro_batch.has_loss and micro_batch.step_fn is None:
        return []
    rows = []
    with torch.no_grad(), _autocast(micro_batch.autocast):
        for i in range(min(batch, MAX_ROW_REPLAYS)):
            try:
                loss = row_loss(i)
            except Exception:  # noqa: BLE001 - a computation that will not run on one row: no samples, see above
                return []
            if loss is not None and not _finite(loss):
                rows.append(i)
    return rows


@functools.cache
def _mode_class(base: type) -> type:
    """``_Tracer`` on torch's ``TorchFunctionMode`` (``base``, from ``private.torch_function_mode``)."""
    return type("_TracerMode", (_Tracer, base), {})


class _Tracer:
    """Observes every op of one replayed step: the module path it ran in, its first non-finite output. Used as
    ``_mode_class(TorchFunctionMode)``: torch's mode protocol comes from the one guarded home, ``private``."""

    def __init__(self, model: nn.Module, batch: int | None):
        super().__init__()
        self.batch = batch
        self.path: list[tuple[str, str]] = []
        self.culprit: dict | None = None
        # every autograd node of the replay -> the op that made it: module, kind, op, and its floating inputs (kept
        # by reference; their InputStats are computed only for a backward culprit)
        self.nodes: dict[Any, tuple[str, str, str, list[torch.Tensor]]] = {}
        self.backward_culprit: dict | None = None
        # id of a tensor carrying a deliberate fill -> where the fill was written ("from") and the reduction that
        # made a whole group of it a value ("escape", a culprit entry, or None); the tensors are held so that no id
        # is reused while the replay runs
        self.fills: dict[int, dict] = {}
        self._filled: list[torch.Tensor] = []
        self.outputs: list[tuple[str, Any]] = []  # (module, output) of every module call, measured after the replay
        self._hooks = []
        for name, module in model.named_modules():
            entry = (name or type(module).__name__, type(module).__name__)
            self._hooks.append(module.register_forward_pre_hook(lambda *_, entry=entry: self._enter(entry)))
            self._hooks.append(module.register_forward_hook(
                lambda _module, _args, output, entry=entry: self._leave(entry, output)))

    def _enter(self, entry: tuple[str, str]) -> None:
        self.path.append(entry)

    def _leave(self, entry: tuple[str, str], output) -> None:
        """Returns None: a forward hook's return value would replace the module's output. The output is kept, not
        measured: ops run here would run under the tracing mode, as ops of the model."""
        self.path.pop()
        self.outputs.append((entry[0], output))

    def activation_maxima(self) -> list[ActivationMax]:
        """Each module's largest finite |output| over its calls, in the order the modules first returned."""
        maxima: dict[str, ActivationMax] = {}
        with torch.no_grad():
            for module, output in self.outputs:
                for tensor in _tensors(output):
                    if not tensor.is_floating_point() or not tensor.numel():
                        continue
                    data = checkable(tensor)
                    finite = torch.isfinite(data)
                    largest = data.abs().masked_fill(~finite, 0).max().item() if finite.any() else None
                    entry = ActivationMax(module, dtype_name(tensor.dtype), largest, int((~finite).sum()))
                    maxima[module] = maxima[module].merged(entry) if module in maxima else entry
        return list(maxima.values())

    def escaped_into(self, loss: torch.Tensor) -> dict | None:
        """The reduction that made a fill a value, where that value reached a non-finite loss with no op turning it
        into NaN on the way (an -inf maximum through the layers into the loss): the culprit then."""
        carried = self.fills.get(id(loss))
        if carried is None or carried["escape"] is None:
            return None
        return dict(carried["escape"], filled_from=carried["from"])

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        outputs = [t for t in _tensors(result) if t.is_floating_point()]
        if not outputs:
            return result
        op = _op_name(func)
        module, kind = self.path[-1] if self.path else ("model", "model")
        inputs = [t for t in _tensors((args, kwargs)) if t.is_floating_point()]
        self._claim_nodes(outputs, inputs, module, kind, op)
        if self.culprit is not None:
            return result
        carried = _first_fill([self.fills[id(t)] for t in inputs if id(t) in self.fills])
        if op in FILL_OPS:
            if _holds_fill(outputs):
                self._mark_fill(outputs, {"from": f"`{module}` / op `{op}`", "escape": carried and carried["escape"]})
            return result
        bad = [t for t in outputs if not _finite(t)]
        if bad and _turned_bad(bad, inputs):
            found = self._entry(module, kind, op, bad, inputs, outputs,
                                None if carried else _magnitude(func, args, kwargs, bad[0], inputs))
            if carried is not None:  # a fill turned into NaN here, or in the reduction that made it a value
                found = dict(carried["escape"] or found, filled_from=carried["from"])
            self.culprit = found
        elif carried is not None and _holds_fill(outputs):
            escape = carried["escape"]
            if escape is None and bad and op_family(op, OP_FAMILIES) is OpFamily.REDUCE:
                escape = self._entry(module, kind, op, bad, inputs, outputs, None)  # a group that was all fill
            self._mark_fill(outputs, {"from": carried["from"], "escape": escape})
        return result

    def _entry(self, module: str, kind: str, op: str, bad: list[torch.Tensor], inputs: list[torch.Tensor],
               outputs: list[torch.Tensor], max_abs: float | None) -> dict:
        """A forward culprit: where it ran, what it gave, its inputs' statistics and the rows it spoiled."""
        entry = {"phase": Phase.LOSS if module == LOSS_PATH else Phase.FORWARD, "module": module, "kind": kind,
                 "op": op, "value": _kind(bad[0]), "inputs": [_stats(t) for t in inputs],
                 "rows": _nonfinite_rows(bad, self.batch), "dtype": dtype_name(bad[0].dtype), "max_abs": max_abs}
        if op in GROUPED_STATISTICS and inputs and outputs[0].numel():
            entry["reduced_count"] = inputs[0].numel() // outputs[0].numel()  # elements behind each statistic
        return entry

    def _mark_fill(self, tensors: list[torch.Tensor], carried: dict) -> None:
        for tensor in tensors:
            self.fills[id(tensor)] = carried
            self._filled.append(tensor)

    def _claim_nodes(self, outputs, inputs, module, kind, op) -> None:
        """Every autograd node between this op's inputs and outputs belongs to the op (composite ops have several).

        The walk ends at the inputs' nodes and at nodes that hand their gradient to no other node (a parameter's
        gradient accumulator: ``next_functions == ()``), which can never turn a gradient bad.
        """
        stop = {t.grad_fn for t in inputs if t.grad_fn is not None}
        pending = [t.grad_fn for t in outputs if t.grad_fn is not None]
        while pending:
            node = pending.pop()
            if node is None or node in stop or node in self.nodes or not node.next_functions:
                continue
            self.nodes[node] = (module, kind, op, inputs)
            pending.extend(next_node for next_node, _ in node.next_functions)

    def backward(self, loss: torch.Tensor, params: list[nn.Parameter], names: dict) -> str | None:
        """Run the backward pass with every node hooked; return the first parameter whose gradient went bad."""
        order: list[str] = []
        handles = [node.register_hook(lambda grad_in, grad_out, node=node: self._check_node(node, grad_in, grad_out))
                   for node in self.nodes]
        handles += [p.register_hook(lambda grad, p=p: order.append(names[id(p)])
                                    if not _finite(grad) else None) for p in params]
        try:
            loss.sum().backward()
        finally:
            for handle in handles:
                handle.remove()
        if self.culprit is None and self.backward_culprit is not None:
            self.culprit = self.backward_culprit
        return order[0] if order else None

    def _check_node(self, node, grad_inputs, grad_outputs) -> None:
        if self.backward_culprit is not None:
            return
        bad = [g for g in grad_inputs if g is not None and not _finite(g)]
        if bad and all(_finite(g) for g in grad_outputs if g is not None):
            module, kind, op, inputs = self.nodes[node]
            self.backward_culprit = {"phase": Phase.BACKWARD, "module": module, "kind": kind, "op": op,
                                     "value": _kind(bad[0]), "inputs": [_stats(t) for t in inputs],
                                     "rows": _nonfinite_rows(bad, self.batch), "dtype": dtype_name(bad[0].dtype),
                                     "max_abs": None}


# -- helpers -----------------------------------------------------------------------------------------------------
def _magnitude(func, args, kwargs, output: torch.Tensor, inputs: list[torch.Tensor]) -> float | None:
    """The largest magnitude the op's result really has, recomputed in a wider dtype with autocast off, when that is
    finite (the op overflowed its dtype); otherwise the largest finite magnitude among its inputs."""
    wider = WIDER.get(output.dtype)
    if wider is not None:
        widen = lambda t: t.detach().to(wider) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa
        with torch.no_grad(), _autocast_off(output.device.type):
            result = func(*_map(widen, args), **_map(widen, kwargs))
        magnitudes = [checkable(t).abs().max() for t in _tensors(result) if t.is_floating_point() and t.numel()]
        largest = float(torch.stack(magnitudes).max()) if magnitudes else math.nan
        if math.isfinite(largest):
            return largest
    finite = [data.abs()[torch.isfinite(data)] for data in map(checkable, inputs)]
    largest_inputs = [float(t.max()) for t in finite if t.numel()]
    return max(largest_inputs) if largest_inputs else None


def _autocast_off(device_type: str):
    return torch.autocast(device_type, enabled=False) if device_type in ("cpu", "cuda") else contextlib.nullcontext()


def _autocast(state: tuple[tuple[str, torch.dtype], ...]) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for device_type, dtype in state:
        stack.enter_context(torch.autocast(device_type, dtype=dtype))
    return stack


def _restore_rng(cpu_state: torch.Tensor, cuda_states: list[torch.Tensor] | None) -> None:
    torch.set_rng_state(cpu_state)
    if cuda_states is not None:
        torch.cuda.set_rng_state_all(cuda_states)


# -- nested arguments: tuples (named ones too), lists and dicts; anything else is a leaf ----------------------------
def _leaves(tree) -> list:
    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in _leaves(item)]
    if isinstance(tree, dict):
        return [leaf for item in tree.values() for leaf in _leaves(item)]
    return [tree]


def _map(fn: Callable, tree):
    """``tree`` with ``fn`` applied to every leaf, its containers rebuilt as the same types where they can be."""
    if isinstance(tree, list):
        return [_map(fn, item) for item in tree]
    if isinstance(tree, tuple):
        items = [_map(fn, item) for item in tree]
        if hasattr(tree, "_fields"):  # a namedtuple
            return type(tree)(*items)
        try:
            return type(tree)(items)  # a tuple, or a structseq such as torch.return_types.max
        except TypeError:
            return tuple(items)
    if isinstance(tree, dict):
        mapped = {key: _map(fn, value) for key, value in tree.items()}
        if type(tree) is dict:
            return mapped
        try:  # OrderedDict, defaultdict, a Hugging Face ModelOutput: a copy with the values replaced
            rebuilt = copy.copy(tree)
            for key, value in mapped.items():
                rebuilt[key] = value
            return rebuilt
        except Exception:  # noqa: BLE001 - a mapping that will not copy: a plain dict holds the same values
            return mapped
    return fn(tree)


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in _leaves(tree) if isinstance(t, torch.Tensor)]


def _row(tree, i: int, batch: int):
    """``tree`` with every batch-shaped tensor cut to row ``i`` (kept 2-D: ``t[i:i+1]``)."""
    return _map(lambda t: t[i:i + 1] if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == batch else t, tree)


def _class_ids(output, target, class_axis: int) -> bool:
    """``target`` holds class ids for ``output`` (``nanlab.evidence.class_id_targets``: by dtype, never by shape
    alone)."""
    return (isinstance(target, torch.Tensor) and isinstance(output, torch.Tensor) and output.is_floating_point()
            and class_id_targets(dtype_kind(target.dtype), tuple(target.shape), tuple(output.shape), class_axis))


def _join(note: str | None, sentence: str) -> str:
    return f"{note} {sentence}" if note else sentence


def _input_max_abs(inputs: list[torch.Tensor]) -> float | None:
    """The largest finite |x| over the model's floating-point input arrays (integer ids for an embedding have no
    scale, nor has a scalar argument such as the Transformers Trainer's ``num_items_in_batch``)."""
    largest = [checkable(t).abs().nan_to_num(nan=0.0, posinf=0.0).max().item()
               for t in inputs if t.is_floating_point() and t.dim() and t.numel()]  # not a scalar argument
    return max(largest) if largest else None


def _turned_bad(outputs: list[torch.Tensor], inputs: list[torch.Tensor]) -> bool:
    """True when this op is where it went wrong: NaN out of NaN-free inputs, or Inf out of finite ones."""
    if any(torch.isnan(checkable(t)).any() for t in outputs):
        return not any(torch.isnan(checkable(t)).any() for t in inputs)
    return all(_finite(t) for t in inputs)


def _op_name(func) -> str:
    name = getattr(func, "__name__", None) or str(func)
    name = name.strip("_")
    return OP_ALIASES.get(name, name)


def _finite(tensor: torch.Tensor) -> bool:
    """Every value of ``tensor`` is finite (float8 read through ``checkable``)."""
    return bool(torch.isfinite(checkable(tensor)).all())


def _first_fill(carried: list[dict]) -> dict | None:
    """Of the fills an op's inputs carry, one a reduction already made a value (x - max: the max's), else the first."""
    return next((entry for entry in carried if entry["escape"] is not None), carried[0] if carried else None)


def _holds_fill(tensors: list[torch.Tensor]) -> bool:
    """Some value is infinite or as large as the dtype allows (a finfo.min fill): a mask's fill value."""
    for tensor in tensors:
        data = checkable(tensor)
        if data.numel() and (torch.isinf(data).any() or data.abs().max() >= torch.finfo(data.dtype).max / 2):
            return True
    return False


def _kind(tensor: torch.Tensor) -> str:
    data = checkable(tensor)
    if torch.isnan(data).any():
        return "nan"
    return "-inf" if (data == -math.inf).any() else "inf"


def _stats(tensor: torch.Tensor) -> InputStats:
    """One input of the failing op in the shared vocabulary; the range fields None where no value is finite."""
    data = checkable(tensor)
    finite = data[torch.isfinite(data)]
    stats = InputStats(dtype=dtype_name(tensor.dtype), size=data.numel(), zeros=int((data == 0).sum()),
                       negatives=int((data < 0).sum()), nonfinite=data.numel() - finite.numel())
    if finite.numel():
        magnitudes = finite.abs()
        stats.min, stats.max = float(finite.min()), float(finite.max())
        stats.min_abs, stats.max_abs = float(magnitudes.min()), float(magnitudes.max())
    return stats


def _batch_size(tree) -> int | None:
    tensors = [t for t in _tensors(tree) if t.dim() > 0]
    return tensors[0].shape[0] if tensors else None


def _nonfinite_rows(tensors: list[torch.Tensor], batch: int | None) -> list[int]:
    rows: set[int] = set()
    for tensor in tensors:
        if batch is None or tensor.dim() == 0 or tensor.shape[0] != batch or not tensor.is_floating_point():
            continue
        bad = ~torch.isfinite(checkable(tensor)).reshape(batch, -1).all(dim=1)
        rows.update(torch.nonzero(bad).flatten().tolist())
    return sorted(rows)
