"""``nanlab.watch`` for PyTorch: always on and cheap; exact when training first goes non-finite.

While training is healthy the watch does one thing per step, in the optimizer's step pre-hook: it reduces the loss,
the gradients and the weights to three float64 numbers and reads them back together (one host synchronisation).
Nothing runs per layer. The check happens *before* the update, so when the loss or a gradient is non-finite the
weights and optimizer state are still those the step started from: the watch replays that step instrumented (every
op observed through a ``TorchFunctionMode``, every autograd node hooked), finds the first op that turned finite
inputs into a non-finite output, the first parameter whose gradient went non-finite and the samples that carry it,
restores what the replay touched, and raises ``NonFiniteError``. Weights made non-finite by an update are seen at
the next check (or when the ``with`` block ends) and reported as that update's fault.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from nanlab.errors import NanlabError, NonFiniteError
from nanlab.report import NonFiniteReport, conclude, is_recurrent
from nanlab.evidence import HUGE_TARGET_SCALE, label_problem, symmetric_labels

LOSS_PATH = "loss"
# Ops that write -inf on purpose (attention masks): their output is not a fault, what consumes it may be.
FILL_OPS = {"masked_fill", "masked_fill_", "where", "fill", "fill_", "full", "full_like", "index_fill"}
OP_ALIASES = {"truediv": "div", "rtruediv": "div", "div_": "div", "true_divide": "div", "rdiv": "div",
              "pow_": "pow", "rpow": "pow", "log_": "log", "exp_": "exp", "sqrt_": "sqrt"}


class Watch:
    """Context manager around a PyTorch training loop; see the module docstring.

    Give it the model, and the optimizer and loss function for a full report. Use ``watch.loss_fn`` in place of
    your loss function (or pass a ``nanlab.frameworks.torch.loop.Training``, whose ``loss_fn`` is swapped for the duration):
    it records the targets so that the replay can recompute the loss and name the bad samples.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 loss_fn: Callable | None = None, training=None):
        if not isinstance(model, nn.Module):
            raise NanlabError(f"nanlab.watch needs a torch.nn.Module (or a Training), got {type(model).__name__}")
        self.model, self.optimizer, self.training = model, optimizer, training
        self._user_loss = loss_fn
        self.step = 0
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self._names = {id(p): name for name, p in model.named_parameters()}
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._handles: list[Any] = []
        self._inputs = None
        self._rng = None
        self._output = self._target = self._loss = None

    # -- the cheap path ------------------------------------------------------------------------------------------
    def __enter__(self) -> "Watch":
        self._handles.append(self.model.register_forward_pre_hook(self._record_inputs, with_kwargs=True))
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_pre_hook(self._before_update))
        else:
            self._handles.append(torch.optim.optimizer.register_optimizer_step_pre_hook(self._before_update))
        if self.training is not None:
            self.training.loss_fn = self.loss_fn
        return self

    def __exit__(self, kind, error, traceback) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.training is not None:
            self.training.loss_fn = self._user_loss
        if kind is None and self.step and not self._finite(self._weights_norm()):
            self._raise(self._update_report(self.step - 1))

    def loss_fn(self, output: torch.Tensor, target: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Your loss function, unchanged, with its output and targets recorded for the replay."""
        if self._user_loss is None:
            raise NanlabError("watch.loss_fn needs the loss function: nanlab.watch(model, optimizer, loss_fn)")
        self._output, self._target = output, target
        try:
            loss = self._user_loss(output, target, *args, **kwargs)
        except (IndexError, RuntimeError) as error:
            problem = label_problem(target, _num_classes(output))
            if problem is None:
                raise
            report = NonFiniteReport("torch", self.step, "data", module=LOSS_PATH,
                                     symmetric_labels=symmetric_labels(target.detach().cpu()),
                                     op=getattr(self._user_loss, "__name__", None), samples=problem[1],
                                     label_problem=problem[0], data_findings=[problem[0]],
                                     losses=list(self.losses), grad_norms=list(self.grad_norms),
                                     note="The device raised instead of producing NaN.")
            raise NonFiniteError(conclude(report)) from error
        self._loss = loss
        return loss

    def _record_inputs(self, module, args, kwargs) -> None:
        if torch.is_grad_enabled():
            self._inputs = (args, kwargs)
            self._rng = torch.get_rng_state()

    def _weights_norm(self) -> torch.Tensor:
        return _norm([p.detach() for p in self._params])

    def _before_update(self, optimizer, args, kwargs) -> None:
        grads = [p.grad.detach() for p in self._params if p.grad is not None]
        loss = self._loss.detach().double().sum() if self._loss is not None else torch.zeros((), dtype=torch.float64)
        loss_value, grad_norm, weights = torch.stack([loss, _norm(grads), self._weights_norm()]).tolist()
        if not math.isfinite(weights):
            self._raise(self._update_report(self.step - 1))
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            self._raise(self._replay())
        self.losses.append(loss_value)
        self.grad_norms.append(grad_norm)
        self.step += 1
        self._loss = None

    @staticmethod
    def _finite(value: torch.Tensor) -> bool:
        return math.isfinite(value.item())

    def _raise(self, report: NonFiniteReport) -> None:
        raise NonFiniteError(conclude(report))

    # -- the exact path, taken once ------------------------------------------------------------------------------
    def _update_report(self, step: int) -> NonFiniteReport:
        bad = [self._names[id(p)] for p in self._params if not torch.isfinite(p.detach()).all()]
        name = type(self.optimizer).__name__ if self.optimizer is not None else "the optimizer"
        return NonFiniteReport("torch", max(step, 0), "optimizer update", module=name, op="step",
                               parameter=bad[0] if bad else None, recurrent=is_recurrent(bad[0] if bad else None),
                               losses=list(self.losses), grad_norms=list(self.grad_norms))

    def _replay(self) -> NonFiniteReport:
        report = NonFiniteReport("torch", self.step, "backward", losses=list(self.losses),
                                 grad_norms=list(self.grad_norms))
        if self._inputs is None:
            report.note = "The watch saw no forward pass to replay."
            return report
        args, kwargs = self._inputs
        batch = _batch_size(args)
        report.batch_size = batch
        bad_rows = _nonfinite_rows([t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)],
                                   batch)
        target = self._target
        if target is not None:
            report.symmetric_labels = symmetric_labels(target.detach().cpu())
        if target is not None and torch.is_floating_point(target):
            bad_rows = sorted(set(bad_rows) | set(_nonfinite_rows([target], batch)))
            report.huge_targets = bool(target.detach().abs().max().item() > HUGE_TARGET_SCALE)
        if bad_rows:
            report.phase, report.samples = "data", bad_rows
            report.data_findings = [f"non-finite values in samples {', '.join(map(str, bad_rows[:8]))}"]
            return report

        saved_grads = [p.grad for p in self._params]
        saved_buffers = [b.detach().clone() for b in self.model.buffers()]
        saved_rng = torch.get_rng_state()
        for p in self._params:
            p.grad = None
        tracer = _Tracer(self.model, batch)
        try:
            torch.set_rng_state(self._rng)
            with tracer:
                output = self.model(*args, **kwargs)
                tracer.path = [LOSS_PATH]
                loss = self._user_loss(output, target) if self._user_loss is not None and target is not None else None
            first_param = tracer.backward(loss, self._params, self._names) if loss is not None else None
        finally:
            for p, grad in zip(self._params, saved_grads):
                p.grad = grad
            for buffer, value in zip(self.model.buffers(), saved_buffers):
                buffer.copy_(value)
            torch.set_rng_state(saved_rng)

        found = tracer.culprit
        if found is None:
            report.note = ("The replay stayed finite: the step is not reproducible (non-deterministic ops?)."
                           if loss is not None else "No loss function was given to the watch, so the loss and "
                           "backward passes could not be replayed.")
        else:
            report.phase, report.module, report.op = found["phase"], found["module"], found["op"]
            report.value, report.op_inputs, report.samples = found["value"], found["inputs"], found["rows"]
        report.parameter = first_param
        if report.phase == "loss" and not report.samples:
            report.samples = _bad_loss_samples(self._user_loss, output, target, batch)
        report.recurrent = is_recurrent(report.module) or is_recurrent(first_param)
        return report


class _Tracer(TorchFunctionMode):
    """Observes every op of one replayed step: the module path it ran in, its first non-finite output."""

    def __init__(self, model: nn.Module, batch: int | None):
        super().__init__()
        self.batch = batch
        self.path: list[str] = []
        self.culprit: dict | None = None
        self.nodes: dict[Any, tuple[str, str]] = {}
        self.backward_culprit: dict | None = None
        self._hooks = []
        for name, module in model.named_modules():
            label = name or type(module).__name__
            self._hooks.append(module.register_forward_pre_hook(lambda *_, label=label: self._enter(label)))
            self._hooks.append(module.register_forward_hook(lambda *_: self._leave()))

    def _enter(self, label: str) -> None:
        self.path.append(label)

    def _leave(self) -> None:
        self.path.pop()

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(result)[0] if isinstance(t, torch.Tensor)]
        if not outputs or not any(t.is_floating_point() for t in outputs):
            return result
        op = _op_name(func)
        module = self.path[-1] if self.path else "model"
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
        self._claim_nodes(outputs, inputs, module, op)
        if self.culprit is None and op not in FILL_OPS:
            bad = [t for t in outputs if t.is_floating_point() and not torch.isfinite(t).all()]
            if bad and _turned_bad(bad, inputs):
                self.culprit = {"phase": "loss" if module == LOSS_PATH else "forward", "module": module, "op": op,
                                "value": _kind(bad[0]), "inputs": [_stats(t) for t in inputs],
                                "rows": _nonfinite_rows(bad, self.batch)}
        return result

    def _claim_nodes(self, outputs, inputs, module, op) -> None:
        """Every autograd node between this op's inputs and outputs belongs to the op (composite ops have several)."""
        stop = {t.grad_fn for t in inputs if t.grad_fn is not None}
        pending = [t.grad_fn for t in outputs if t.grad_fn is not None]
        while pending:
            node = pending.pop()
            if node is None or node in stop or node in self.nodes or type(node).__name__ == "AccumulateGrad":
                continue
            self.nodes[node] = (module, op)
            pending.extend(next_node for next_node, _ in node.next_functions)

    def backward(self, loss: torch.Tensor, params: list[nn.Parameter], names: dict) -> str | None:
        """Run the backward pass with every node hooked; return the first parameter whose gradient went bad."""
        order: list[str] = []
        handles = [node.register_hook(lambda grad_in, grad_out, node=node: self._check_node(node, grad_in, grad_out))
                   for node in self.nodes]
        handles += [p.register_hook(lambda grad, p=p: order.append(names[id(p)])
                                    if not torch.isfinite(grad).all() else None) for p in params]
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
        bad = [g for g in grad_inputs if g is not None and not torch.isfinite(g).all()]
        if bad and all(torch.isfinite(g).all() for g in grad_outputs if g is not None):
            module, op = self.nodes[node]
            self.backward_culprit = {"phase": "backward", "module": module, "op": op, "value": _kind(bad[0]),
                                     "inputs": [], "rows": _nonfinite_rows(bad, self.batch)}


def _turned_bad(outputs: list[torch.Tensor], inputs: list[torch.Tensor]) -> bool:
    """True when this op is where it went wrong: NaN out of NaN-free inputs, or Inf out of finite ones."""
    if any(torch.isnan(t).any() for t in outputs):
        return not any(torch.isnan(t).any() for t in inputs)
    return all(torch.isfinite(t).all() for t in inputs)


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm in float64: NaN/Inf exactly when some element is, and never an overflow of finite values."""
    if not tensors:
        return torch.zeros((), dtype=torch.float64)
    return torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float64)).norm()


def _op_name(func) -> str:
    name = getattr(func, "__name__", None) or str(func)
    name = name.strip("_")
    return OP_ALIASES.get(name, name)


def _kind(tensor: torch.Tensor) -> str:
    if torch.isnan(tensor).any():
        return "nan"
    return "-inf" if (tensor == -math.inf).any() else "inf"


def _stats(tensor: torch.Tensor) -> dict:
    data = tensor.detach()
    return {"zeros": bool((data == 0).any()), "negatives": bool((data < 0).any()),
            "max_abs": float(data.abs().max()) if data.numel() else 0.0}


def _batch_size(args) -> int | None:
    tensors = [t for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor) and t.dim() > 0]
    return tensors[0].shape[0] if tensors else None


def _nonfinite_rows(tensors: list[torch.Tensor], batch: int | None) -> list[int]:
    rows: set[int] = set()
    for tensor in tensors:
        if batch is None or tensor.dim() == 0 or tensor.shape[0] != batch or not tensor.is_floating_point():
            continue
        bad = ~torch.isfinite(tensor.detach()).reshape(batch, -1).all(dim=1)
        rows.update(torch.nonzero(bad).flatten().tolist())
    return sorted(rows)


def _bad_loss_samples(loss_fn, output, target, batch: int | None) -> list[int]:
    """The samples whose own loss is non-finite: the loss recomputed one row at a time."""
    if loss_fn is None or target is None or batch is None:
        return []
    with torch.no_grad():
        return [i for i in range(batch)
                if not torch.isfinite(loss_fn(output[i:i + 1], target[i:i + 1])).all()]


def _num_classes(output: torch.Tensor) -> int | None:
    return output.shape[-1] if isinstance(output, torch.Tensor) and output.dim() >= 2 else None


def watch(model, optimizer=None, loss_fn=None, training=None) -> Watch:
    """``nanlab.watch`` for a ``torch.nn.Module`` (or a nanlab ``Training``)."""
    return Watch(model, optimizer, loss_fn, training=training)
