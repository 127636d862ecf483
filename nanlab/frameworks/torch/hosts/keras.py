"""Keras 3 on the torch backend (``KERAS_BACKEND=torch``): ``model.fit(..., callbacks=[nanlab.watch(model)])``.

There a Keras model *is* a ``torch.nn.Module`` and its layers are modules too, so the PyTorch watch does the work
(``Watch(check_at="host")``: the cheap per-step check, the policy through the core, the instrumented replay); this
adapter only plugs it into Keras' torch trainer. Its ``train_step`` runs the forward pass, ``compute_loss``,
``loss.backward()`` and then ``optimizer.apply(gradients, trainable_weights)`` under ``torch.no_grad()``; no Keras
callback runs between the backward pass and the update. So the adapter shadows two methods on the instances it is
given (as nanlab's TensorFlow watch does in Keras 3 on TensorFlow), both public methods that ``fit`` calls through
the instance:

- ``model.compute_loss``: records the micro-batch for the replay (``watch.record_step``: the model's forward pass in
  training mode and the model's own ``compute_loss`` on ``x, y, sample_weight``) and counts its loss
  (``watch.add_loss``);
- ``model.optimizer.apply``: runs the check (``watch.before_update``) before the update. At a bad step ``raise``
  propagates ``NonFiniteError`` out of ``fit`` with the trainable weights and the optimizer's state as the step
  found them; ``stop`` drops the update and sets ``model.stop_training`` (``fit`` ends after that batch); ``skip``
  drops the update (``optimizer.apply`` is not called, so its iteration count does not move either).

Both shadows go through ``hook``/``unhook`` below, this module's guarded home of Keras internals (with
``flatten_layers``, Keras' private ``Layer._flatten_layers``, which names the layers; without it the layers
``Model.layers`` reaches are named). If a Keras release stops calling ``optimizer.apply`` through the instance, the
watch notices at the end of the batch, logs it, and checks there instead: training still stops on a NaN, but after
that update, and the report says so. If it stops calling ``compute_loss`` through the instance, the check still runs
before the update on the gradients, without the loss or a replay (the report says there was nothing to replay).

The replay runs a stand-in module (``replay_view``) whose submodules are the Keras model and every nested layer,
named by their Keras paths without the model's name (``block/attention``, as the TensorFlow watch names them), and
whose parameters are the model's trainable variables under their paths (``hidden/kernel``), so that reports name
layers and weights as Keras does. Keras' dropout draws its masks from seed generators held in integer
non-trainable variables: the adapter copies those (a few integers) at each training forward pass, and the replay
starts from them, so it draws the same masks. What the replay's forward pass writes into non-trainable variables
(BatchNorm's moving statistics, the seed states) is put back afterwards. What the bad step's own forward pass wrote
there is not (as in a plain PyTorch loop, whose BatchNorm buffers the watch does not copy each step).

Per step, beyond the torch watch's own check (one fused norm, one host read): the recorded step (references and
the CPU RNG state) and the seed copies. Measured on a CPU, one thread, a 3-layer MLP, 128 steps: 1.03x fit's time.

Not covered: ``LossScaleOptimizer`` (``mixed_float16``: its gradients are scaled and it skips overflowing steps
itself; the watch refuses it with a message; ``mixed_bfloat16`` works), ``jit_compile=True`` (``torch.compile`` of
the whole train step: the shadows would break its graph; refused), out-of-range class labels (not checked before
the loss, as the plain PyTorch watch's ``loss_fn`` does). Keras has no callback for an exception inside ``fit``: one
the watch did not raise itself (a ``KeyboardInterrupt``) leaves the shadows on the model until the next
``on_train_end``; the ``with nanlab.watch(model): model.fit(...)`` form always removes them. A hand-written PyTorch
loop around a Keras model (a torch optimizer, ``nanlab.watch(model, optimizer, loss_fn)``) gets the plain PyTorch
watch.
"""
from __future__ import annotations

import functools
import inspect
import logging
import sys
from typing import Callable

import keras  # already imported: nanlab.watch was given a Keras model (torch is imported where it is used)

from nanlab.frameworks.torch.hosts import HostSurface
from nanlab.errors import NanlabError, NonFiniteError
from nanlab.report import NonFiniteReport
from nanlab.watching import WatchPolicy
from nanlab.watching.vocabulary import Phase

LOG = logging.getLogger("nanlab.watch")
OPTIONS: tuple[str, ...] = ()
CHECKED_WITH = "Keras 3.15 and torch 2.13"
FLATTEN_LAYERS = "_flatten_layers"  # Keras' private Layer._flatten_layers
LATE_NOTE = ("Keras did not call the watched optimizer.apply at this step, so the watch checked after the update: "
             "the weights are those the bad step's update left, and what the report says of the step's loss and "
             "gradients was not checked before it.")


def on_torch_backend(model) -> bool:
    """True for a Keras model that is a ``torch.nn.Module`` (``KERAS_BACKEND=torch``). Imports nothing: on the
    TensorFlow backend, or where torch is not even imported, a Keras model is not one, and the TensorFlow watch
    keeps it."""
    torch_module = sys.modules.get("torch")
    return torch_module is not None and isinstance(model, torch_module.nn.Module)


# -- the Keras internals this adapter relies on, each guarded ---------------------------------------------------
def moved(api: str, consequence: str) -> str:
    torch_version = getattr(sys.modules.get("torch"), "__version__", "not imported")
    return (f"{api} moved (Keras {keras.__version__}, torch {torch_version}; nanlab was checked with "
            f"{CHECKED_WITH}): {consequence}")


def hook(owner, name: str, replacement: Callable) -> Callable | None:
    """Shadow ``owner.name`` with ``replacement`` on this instance (its ``__dict__``); returns the instance's own
    method, or None when it cannot be shadowed (missing, not callable, already shadowed by another watch)."""
    original = getattr(owner, name, None)
    if not callable(original) or name in vars(owner):
        return None
    try:
        setattr(owner, name, replacement)
    except (AttributeError, TypeError):
        return None
    return original if vars(owner).get(name) is replacement else None


def unhook(owner, name: str, replacement: Callable) -> None:
    if vars(owner).get(name) is replacement:
        del vars(owner)[name]


def flatten_layers(model) -> tuple[list, str | None]:
    """Every layer nested in ``model`` with its path (``block/attention``), the innermost first, and None; or,
    where Keras' private ``Layer._flatten_layers`` is gone, those reachable through ``Model.layers`` and a sentence
    saying so."""
    from torch import nn

    found: list[tuple[str, nn.Module]] = []
    seen = {id(model)}
    note = None

    def children(layer) -> list:
        nonlocal note
        method = getattr(layer, FLATTEN_LAYERS, None)
        if callable(method):
            try:
                return list(method(include_self=False, recursive=False))
            except TypeError:  # its signature changed
                pass
        note = moved("Layer._flatten_layers", "only the layers reachable through Model.layers are named")
        return list(getattr(layer, "layers", None) or [])

    def walk(layer, prefix: str) -> None:
        for child in children(layer):
            if id(child) in seen or not isinstance(child, nn.Module):
                continue
            seen.add(id(child))
            path = f"{prefix}{child.name}"
            walk(child, f"{path}/")
            found.append((path, child))  # after its own layers: see replay_view

    walk(model, "")
    return found, note


def replay_view(model):
    """What the replay runs and names: a plain ``torch.nn.Module`` whose submodules are the Keras model and its
    nested layers under their Keras paths, and whose parameters are the model's trainable variables under theirs
    (without the model's name); and the note of ``flatten_layers``. Never called itself: the replay runs the
    recorded step, which calls the model; the hooks the replay puts on these submodules name the layer each op ran
    in."""
    from torch import nn

    view = nn.Module()
    prefix = f"{model.name}/"
    for variable in model.trainable_variables:
        path = variable.path[len(prefix):] if variable.path.startswith(prefix) else variable.path
        if isinstance(variable.value, nn.Parameter) and path and "." not in path and not hasattr(view, path):
            view.register_parameter(path, variable.value)
    # A layer a subclassed layer or model holds as an attribute is also its torch submodule, and named_modules
    # names a module by the first path that reaches it: the innermost layers come first, the model last, so that
    # each is named by its Keras path (block/inner), not by torch's (net.block.inner).
    layers, note = flatten_layers(model)
    for path, layer in [*layers, (model.name or "model", model)]:
        name = path.replace(".", "_")
        if name not in view._modules:
            view.add_module(name, layer)
    return view, note


# -- the watch ---------------------------------------------------------------------------------------------------
class KerasWatch(HostSurface, keras.callbacks.Callback):
    """``model.fit(..., callbacks=[nanlab.watch(model)])`` for Keras 3 on the torch backend (see the module
    docstring); also ``with nanlab.watch(model): model.fit(...)``.

    Attributes, the same as every watch's: ``step``, ``history``, ``report``, ``stopped``, ``policy``; ``watch`` is
    the PyTorch ``Watch`` doing the work."""

    def __init__(self, model, policy: WatchPolicy):
        super().__init__()
        if not on_torch_backend(model):
            raise NanlabError(f"{type(model).__name__} is not a Keras model on the torch backend")
        self.watched = model
        self.watch = None  # the PyTorch Watch, made when training begins
        self._policy = policy
        self._attached = False
        self._hooked: dict[str, tuple[object, Callable, Callable]] = {}  # name -> (owner, original, replacement)
        self._handles: list = []
        self._seed_variables: list = []
        self._seeds: list | None = None  # the seed states at the last training forward pass
        self._live: list | None = None  # (variable, value) pairs a running replay will put back
        self._loss_has_training = True
        self._applied = False
        self._late_warned = False

    # -- the surface every watch shares ---------------------------------------------------------------------------
    @property
    def policy(self) -> WatchPolicy:
        return self._policy

    # -- attaching: fit's on_train_begin / on_train_end, or a with block ----------------------------------------
    def __enter__(self) -> "KerasWatch":
        self._attach()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self._detach(kind, error, traceback)

    def on_train_begin(self, logs=None) -> None:
        self._attach()

    def on_train_end(self, logs=None) -> None:
        self._detach(None, None, None)

    def _attach(self) -> None:
        import torch

        if self._attached:
            return
        model = self.watched
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            raise NanlabError("nanlab.watch(model) for Keras on the torch backend needs a compiled model "
                              "(model.compile(optimizer=..., loss=...)) before fit")
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            raise NanlabError("nanlab.watch does not yet support Keras' LossScaleOptimizer (mixed_float16) on the "
                              "torch backend: its gradients are scaled and it skips overflowing steps itself")
        if getattr(model, "jit_compile", False) is True:
            raise NanlabError("nanlab.watch does not support jit_compile=True on the torch backend (fit's step is "
                              "torch.compile'd as a whole); compile the model with jit_compile=False")
        if self.watch is None:
            from nanlab.frameworks.torch.watch import Watch

            view, note = replay_view(model)
            if note:
                LOG.warning("nanlab.watch: %s", note)
            self.watch = Watch(view, None, None, policy=self._policy, check_at="host")
            self._seed_variables = [v.value for v in model.non_trainable_variables
                                    if isinstance(v.value, torch.Tensor) and not v.value.is_floating_point()]
        self.watch.__enter__()
        self._attached = True
        self._handles.append(model.register_forward_pre_hook(self._record_seeds, with_kwargs=True))
        for owner, name, replacement in ((model, "compute_loss", self._compute_loss),
                                         (optimizer, "apply", self._apply)):
            original = hook(owner, name, replacement)
            if original is None:
                LOG.warning("nanlab.watch: %s", moved(f"{type(owner).__name__}.{name}", "it cannot be watched on "
                                                      "this instance"))
            else:
                self._hooked[name] = (owner, original, replacement)
        if "compute_loss" in self._hooked:
            original = self._hooked["compute_loss"][1]
            try:
                self._loss_has_training = "training" in inspect.signature(original).parameters
            except (TypeError, ValueError):
                self._loss_has_training = False

    def _detach(self, kind=None, error=None, traceback=None) -> None:
        if not self._attached:
            return
        self._attached = False
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for name, (owner, _, replacement) in self._hooked.items():
            unhook(owner, name, replacement)
        self._hooked.clear()
        self.watch.__exit__(kind, error, traceback)  # at a clean end: a weight left non-finite raises here

    # -- what each step records -----------------------------------------------------------------------------------
    def _record_seeds(self, module, args, kwargs) -> None:
        """The seed generators' states as the training forward pass starts (a few integers): the replay starts
        from them, so that dropout draws the same masks."""
        import torch

        if self._seed_variables and self._live is None and torch.is_grad_enabled() and kwargs.get("training"):
            self._seeds = [v.detach().clone() for v in self._seed_variables]

    def _compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, **kwargs):
        """The model's own ``compute_loss``; for a training step the micro-batch is recorded and its loss counted."""
        import torch

        original = self._hooked["compute_loss"][1]
        loss = original(x, y, y_pred, sample_weight, **kwargs)
        if kwargs.get("training", True) and torch.is_grad_enabled() and self._live is None and not self.stopped:
            step = functools.partial(self._replay_step, self._seeds)
            self.watch.record_step(step, (x, y, sample_weight), {})
            self.watch.add_loss(loss)
        return loss

    def _replay_step(self, seeds, x, y, sample_weight):
        """One micro-batch's training computation, as the replay runs it again: the forward pass in training mode
        from the recorded seed states, then the model's own loss."""
        import torch

        model = self.watched
        if self._live is None:  # first run of this replay: keep what it will overwrite
            self._live = [(v.value, v.value.detach().clone()) for v in model.non_trainable_variables
                          if isinstance(v.value, torch.Tensor)]
        if seeds is not None:
            with torch.no_grad():
                for variable, value in zip(self._seed_variables, seeds):
                    variable.copy_(value)
        y_pred = model(x, training=True)
        compute_loss = self._hooked["compute_loss"][1] if "compute_loss" in self._hooked else model.compute_loss
        if self._loss_has_training:
            return compute_loss(x, y, y_pred, sample_weight, training=True)
        return compute_loss(x, y, y_pred, sample_weight)

    def _restore_live(self) -> None:
        """Put back the non-trainable variables a replay overwrote."""
        import torch

        live, self._live = self._live, None
        if live:
            with torch.no_grad():
                for tensor, value in live:
                    tensor.copy_(value)

    # -- the check, before the update -----------------------------------------------------------------------------
    def _apply(self, *args, **kwargs):
        """The watched ``optimizer.apply``: check first; apply the update only if the step is healthy."""
        self._applied = True
        dropped: list[bool] = []
        self._check(lambda: dropped.append(True))
        if self.stopped:
            self.watched.stop_training = True
        if dropped or self.stopped:
            return None
        return self._hooked["apply"][1](*args, **kwargs)

    def _check(self, drop_update: Callable[[], None], late: bool = False) -> None:
        import torch

        before, step = self.watch.report, self.watch.step
        try:
            with torch.enable_grad():  # fit applies under torch.no_grad(); the replay needs autograd
                self.watch.before_update(drop_update=drop_update)
        except BaseException as error:
            self._restore_live()
            if late and isinstance(error, NonFiniteError):
                _checked_late(error.report, step)
            self._detach(type(error), error, error.__traceback__)  # fit's on_train_end will not run
            raise
        self._restore_live()
        if late and self.watch.report is not before:  # stopped or skipped, after the update
            _checked_late(self.watch.report, step)

    def on_train_batch_begin(self, batch, logs=None) -> None:
        self._applied = False

    def on_train_batch_end(self, batch, logs=None) -> None:
        """Where Keras did not call the watched ``optimizer.apply`` (a release that stopped calling it through the
        instance, a custom ``train_step``), check here, after the update."""
        if self._applied or not self._attached or not self.watched.trainable_weights:
            return
        if not self._late_warned:
            self._late_warned = True
            LOG.warning("nanlab.watch: %s", moved("Optimizer.apply (called through the instance)",
                                                   "the watch checks each step after its update"))
        self._check(lambda: None, late=True)
        if self.stopped:
            self.watched.stop_training = True


def _checked_late(report: NonFiniteReport, step: int) -> None:
    """A report of a check made after the update (``optimizer.apply`` was not watched): the update that left a
    weight non-finite is this step's own, whatever the watch's update report says of the step before."""
    if report.phase == Phase.OPTIMIZER:
        report.step = step
        report.note = LATE_NOTE
    else:
        report.note = " ".join(filter(None, [report.note, LATE_NOTE]))


def watch(model, optimizer=None, loss_fn=None, *, policy: WatchPolicy, **options):
    """``nanlab.watch`` for a Keras model on the torch backend: the Keras callback, or, given a torch optimizer (a
    hand-written PyTorch loop around a Keras model), the plain PyTorch watch."""
    import torch

    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise NanlabError(f"unknown nanlab.watch option {unknown[0]!r} for Keras on the torch backend")
    if optimizer is not None or loss_fn is not None:
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise NanlabError("for Keras' fit on the torch backend pass the model alone: "
                              "model.fit(..., callbacks=[nanlab.watch(model)]); with a hand-written loop, "
                              f"nanlab.watch(model, optimizer, loss_fn) takes a torch optimizer, got "
                              f"{type(optimizer).__name__}")
        from nanlab.frameworks.torch import watch as torch_watch

        return torch_watch.watch(model, optimizer, loss_fn, policy=policy)
    return KerasWatch(model, policy)
