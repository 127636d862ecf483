"""The one home of what nanlab's TensorFlow watch and replay rely on beyond TensorFlow's and Keras' public API.

Each item is reached through a function here, and each says by name what moved when a release takes it away:

- ``tensorflow.python.framework.op_callbacks`` (private module; the replay only): the eager op-callback hook that
  ``tf.debugging.enable_check_numerics`` is built on. Without it the replay cannot run; the watch still raises,
  stops or skips, with a report whose note says localisation was unavailable.
- ``Layer._flatten_layers`` (private method; the replay, and the watch to find frozen layers): every nested layer.
  Without it both fall back to ``Model.layers``, walked recursively (public), and the replay's note says so.
- ``Model.train_step`` and ``Model.compute_loss`` shadowed on the watched model instance (public methods; that
  ``fit`` calls them through the instance is Keras 3's implementation): where the watch saves the batch, checks the
  labels and records the loss inside fit's compiled step. ``fit``'s step function is then rebuilt through the public
  ``Model.make_train_function(force=True)``.
- ``Optimizer.apply`` shadowed on the optimizer instance (its ``__dict__``; that ``apply_gradients`` and fit's step
  call it through the instance is Keras 3's implementation): where the watch measures the gradients and holds a bad
  step's update back.

The watch checks at the end of the first step that each shadowed method really ran (``HOOKS``); one that did not is
a hook that moved: the watch logs which, and keeps checking what it still can (``moved``).
"""
from __future__ import annotations

import importlib
from typing import Callable

from nanlab.frameworks.tensorflow.backend import keras, tf

OP_CALLBACKS = "tensorflow.python.framework.op_callbacks"
FLATTEN_LAYERS = "_flatten_layers"
CHECKED_WITH = "TensorFlow 2.21 and Keras 3.15"  # the versions the tests of these hooks last ran against
KERAS_MAJOR = 3
HOOKS = {
    "train_step": "Model.train_step",
    "compute_loss": "Model.compute_loss",
    "apply": "Optimizer.apply",
}


class PrivateAPIMoved(ImportError):
    """A TensorFlow or Keras internal nanlab relies on is missing; the message names it."""


def versions() -> str:
    return f"TensorFlow {tf.__version__}, Keras {keras.__version__}"


def moved(api: str, consequence: str) -> str:
    """One sentence naming the internal that moved, the versions running, those checked, and what is lost."""
    return f"{api} moved ({versions()}; nanlab was checked with {CHECKED_WITH}): {consequence}"


def op_callbacks():
    """TensorFlow's private op-callback module, or ``PrivateAPIMoved`` naming it."""
    try:
        module = importlib.import_module(OP_CALLBACKS)
    except ImportError as missing:
        raise PrivateAPIMoved(moved(OP_CALLBACKS, f"the replay cannot watch each op ({missing})")) from None
    if not (callable(getattr(module, "add_op_callback", None)) and
            callable(getattr(module, "remove_op_callback", None))):
        raise PrivateAPIMoved(moved(f"{OP_CALLBACKS}.add_op_callback", "the replay cannot watch each op"))
    return module


def flatten_layers(layer, include_self: bool = False) -> tuple[list, str | None]:
    """Every layer nested in ``layer`` (``layer`` first when ``include_self``), and None; or, where Keras'
    ``Layer._flatten_layers`` is gone, those reachable through ``Model.layers`` and a sentence saying so."""
    method = getattr(layer, FLATTEN_LAYERS, None)
    if callable(method):
        try:
            return list(method(include_self=include_self)), None
        except TypeError:  # its signature changed
            pass
    found: list = []
    seen: set[int] = set()

    def walk(node, own: bool) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if own:
            found.append(node)
        for child in getattr(node, "layers", None) or []:
            walk(child, True)

    walk(layer, include_self)
    return found, moved("Keras' Layer._flatten_layers", "only the layers reachable through Model.layers were traced")


def keras_major() -> int:
    try:
        return int(keras.__version__.split(".")[0])
    except ValueError:
        return 0


def hook_train_step(model, train_step: Callable, compute_loss: Callable) -> tuple[Callable, Callable]:
    """Shadow ``model.train_step`` and ``model.compute_loss`` on this instance; returns the model's own two.
    Refused (``PrivateAPIMoved``) outside Keras 3, whose ``fit`` is the one known to call them this way."""
    if keras_major() != KERAS_MAJOR or not (callable(getattr(model, "train_step", None)) and
                                            callable(getattr(model, "compute_loss", None))):
        raise PrivateAPIMoved(moved("Model.train_step / Model.compute_loss", "fit's step cannot be watched"))
    originals = model.train_step, model.compute_loss
    model.train_step = train_step
    model.compute_loss = compute_loss
    return originals


def unhook_train_step(model) -> None:
    for name in ("train_step", "compute_loss"):
        vars(model).pop(name, None)


def rebuild_train_function(model) -> None:
    """Make ``fit`` build its step function again (around the watched or the model's own ``train_step``)."""
    model.make_train_function(force=True)


def hook_apply(optimizer, apply: Callable) -> Callable | None:
    """Shadow ``optimizer.apply`` on this instance; returns the optimizer's own, or None when it is already
    shadowed (by this or another watch)."""
    if "apply" in vars(optimizer):
        return None
    original = optimizer.apply
    optimizer.apply = apply
    return original


def unhook_apply(optimizer) -> None:
    vars(optimizer).pop("apply", None)
