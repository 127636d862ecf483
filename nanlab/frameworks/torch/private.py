"""The one guarded home of what nanlab uses from torch beyond its public, promised API.

Importing this module cannot fail: each use is looked up on the running torch when it is needed, feature-detected
(not trusted from a version number alone), and each has a stated fallback, so that training under the watch keeps
working when a torch release moves one, and still stops on a NaN:

- ``torch.overrides.TorchFunctionMode`` (not in ``torch.overrides.__all__``): the replay observes every op of the
  failing step through it. Gone: ``torch_function_mode`` raises ``PrivateAPIMoved`` (an ``ImportError``); the
  watch still raises ``NonFiniteError``, with a report whose note says localisation was unavailable and why.
- ``GradScaler.step``, ``unscale_`` and ``update``, shadowed on the one scaler instance handed to the watch and
  removed when it detaches. No public hook sees a step the scaler skips (it never calls ``optimizer.step``), so
  this is how the watch checks every step of a mixed-precision loop. Gone (not plain Python methods of the
  scaler's class any more): ``scaler_hooks_missing`` says which; the watch logs it, checks the steps the scaler
  lets through in the optimizer's public step pre-hook and each loss as it is computed (one host read per
  forward), so a non-finite loss still raises; the loss-scale history and overflow patience are then unavailable.
- ``optimizer.found_inf``, the tensor ``GradScaler.step`` sets on an optimizer that unscales inside its own step
  (fused Adam): how the watch notices a scaler it was not given. Gone (``GradScaler.step`` no longer names it):
  ``scaler_is_stepping`` answers False and says so once on the ``nanlab.watch`` logger.

- ``OptimizedModule._orig_mod``, the original module of a ``torch.compile``d model: the replay runs it eagerly and
  the watch names its parameters (replaying through the compiled module would recompile for every instrumented
  op). Gone: ``original_module`` returns the compiled module itself and says so once; localisation then replays
  through the compiler, slower, and may meet dynamo's recompile limit.

- A host's own attribute, replaced on one instance for the length of a run (``replace_attribute``): the
  Transformers ``Trainer``'s ``compute_loss_func`` or ``label_smoother``, the function that computes the loss outside
  the model, given the watch's recording ``loss_fn`` in its place so that the loss is checked and can be replayed
  (no public event sees the labels or the loss). Only a plain instance attribute is replaced (``vars(obj)``), never
  a class attribute or a property. Not one any more (a release turned it into a property, say): the host keeps its
  own function and the watch checks the gradients alone, saying so in the report.

Two former private uses now have public replacements: ``torch.utils._pytree`` (the replay walks tuples, lists and
dicts itself) and the ``AccumulateGrad`` node's name (the replay's walk over the autograd graph ends at nodes that
hand their gradient to no other node, ``next_functions == ()``, which is what a parameter's accumulator is).
"""
from __future__ import annotations

import inspect
import logging
import sys
from typing import Callable

import torch

LOG = logging.getLogger("nanlab.watch")
CHECKED_UP_TO = "2.13"  # the newest torch release these uses were checked against
TORCH_FUNCTION_MODE = "torch.overrides.TorchFunctionMode"
SCALER_METHODS = ("step", "unscale_", "update")
FOUND_INF = "optimizer.found_inf (set by torch.amp.GradScaler.step)"
_WARNED: set[str] = set()


class PrivateAPIMoved(ImportError):
    """A private torch API nanlab uses is not there (or not what it was) in the running torch."""

    def __init__(self, api: str, consequence: str):
        self.api = api
        super().__init__(f"{api} is not available as nanlab uses it in torch {torch.__version__} (checked up to "
                         f"torch {CHECKED_UP_TO}): {consequence}")


def torch_function_mode() -> type:
    """``torch.overrides.TorchFunctionMode``, the base of the replay's op observer."""
    mode = getattr(torch.overrides, "TorchFunctionMode", None)
    if not (isinstance(mode, type) and all(callable(getattr(mode, name, None))
                                           for name in ("__torch_function__", "__enter__", "__exit__"))):
        raise PrivateAPIMoved(TORCH_FUNCTION_MODE, "the replay cannot observe the failing step's ops")
    return mode


# -- the loss scaler: its public methods, shadowed on one instance ----------------------------------------------
def scaler_hooks_missing(scaler) -> str | None:
    """None when the watch can shadow ``scaler``'s ``step``/``unscale_``/``update``; else a message naming what
    moved and what the watch does instead."""
    kind = type(scaler)
    # A plain function of the class: an instance attribute shadows it. (A property would silently win over the
    # shadow, and the watch would never see a step.)
    missing = [name for name in SCALER_METHODS if not inspect.isfunction(inspect.getattr_static(kind, name, None))]
    if not missing and isinstance(getattr(scaler, "__dict__", None), dict):
        return None
    api = " and ".join(f"{kind.__module__}.{kind.__qualname__}.{name}" for name in missing or SCALER_METHODS)
    return str(PrivateAPIMoved(api, "the watch cannot see the steps the loss scaler skips; it checks the steps "
                                    "the scaler lets through, and each loss as it is computed (one host read per "
                                    "forward); loss-scale history and overflow patience are unavailable"))


def hook_scaler(scaler, replacements: dict[str, Callable]) -> None:
    """Shadow the scaler's methods on this instance only (``unhook_scaler`` removes them)."""
    for name in SCALER_METHODS:
        vars(scaler)[name] = replacements[name]


def unhook_scaler(scaler) -> None:
    for name in SCALER_METHODS:
        vars(scaler).pop(name, None)


def scaler_original(scaler, name: str) -> Callable:
    """The scaler's own method ``name``, bound, under the shadow."""
    return getattr(type(scaler), name).__get__(scaler)


# -- torch.compile: the original module --------------------------------------------------------------------------
ORIG_MOD = "torch._dynamo.eval_frame.OptimizedModule._orig_mod"
ORIG_MOD_ATTRIBUTE = "_orig_mod"


def compiled_module_class() -> type | None:
    """``OptimizedModule``, the class of what ``torch.compile(module)`` returns, once dynamo is loaded (a compiled
    model cannot exist before), else None."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    cls = getattr(eval_frame, "OptimizedModule", None)
    return cls if isinstance(cls, type) else None


def is_compiled(module) -> bool:
    cls = compiled_module_class()
    return cls is not None and isinstance(module, cls)


def original_module(module):
    """The eager module under a ``torch.compile``d one (``module`` itself when it is not compiled)."""
    if not is_compiled(module):
        return module
    original = getattr(module, ORIG_MOD_ATTRIBUTE, None)
    if isinstance(original, torch.nn.Module):
        return original
    warn_once(ORIG_MOD, str(PrivateAPIMoved(ORIG_MOD, "the replay runs the compiled module itself (slower; it may "
                                                      "reach dynamo's recompile limit)")))
    return module


# -- a host's attribute, replaced on one instance ----------------------------------------------------------------
def replaceable(obj, name: str) -> bool:
    """``obj.name`` is a plain instance attribute (no property or other descriptor of its class in the way)."""
    return isinstance(getattr(obj, "__dict__", None), dict) and name in vars(obj) and not hasattr(
        inspect.getattr_static(type(obj), name, None), "__set__")


def replace_attribute(obj, name: str, value) -> Callable[[], None] | None:
    """Set ``obj.name = value`` when ``replaceable``; returns the call that puts the original back (or None)."""
    if not replaceable(obj, name):
        return None
    original = vars(obj)[name]
    vars(obj)[name] = value

    def restore() -> None:
        if vars(obj).get(name) is value:
            vars(obj)[name] = original

    return restore


# -- found_inf: a scaler stepping a fused optimizer ---------------------------------------------------------------
def found_inf_available() -> bool:
    """``GradScaler.step`` still hands ``found_inf`` to the optimizers that unscale in their own step."""
    step = getattr(getattr(torch.amp, "GradScaler", None), "step", None)
    return "found_inf" in getattr(getattr(step, "__code__", None), "co_names", ())


def scaler_is_stepping(optimizer) -> bool:
    """A GradScaler is stepping ``optimizer`` (one that unscales inside its own step, e.g. fused Adam)."""
    if not found_inf_available():
        warn_once(FOUND_INF, str(PrivateAPIMoved(FOUND_INF, "the watch cannot tell that a GradScaler it was not "
                                                 "given steps a fused optimizer; pass it: nanlab.watch(..., "
                                                 "scaler=scaler)")))
        return False
    return getattr(optimizer, "found_inf", None) is not None


def warn_once(api: str, message: str) -> None:
    """Log ``message`` on the ``nanlab.watch`` logger, once per process for each ``api``."""
    if api not in _WARNED:
        _WARNED.add(api)
        LOG.warning("nanlab.watch: %s", message)
