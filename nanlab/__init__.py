"""nanlab: reproduce, diagnose and fix the well-known causes of NaN/Inf loss, in PyTorch and TensorFlow/Keras.

``import nanlab`` imports neither framework; each is loaded when a run first needs it.
"""
from nanlab.errors import NanlabError, NonFiniteError
from nanlab.registry import Cause, Fix, get_cause, list_causes
from nanlab.reproduce import ContractRow, check_contract, reproduce, verify
from nanlab.run import Run

__version__ = "0.1.0"

__all__ = ["Cause", "ContractRow", "Fix", "NanlabError", "NonFiniteError", "Run", "check_contract", "get_cause",
           "list_causes", "reproduce", "scan", "verify", "watch", "__version__"]


def watch(model, optimizer=None, loss_fn=None):
    """Watch training for the first non-finite loss, gradient or weight; raise ``NonFiniteError`` with a report.

    PyTorch: ``with nanlab.watch(model, optimizer, loss_fn) as w:`` around your loop, computing the loss with
    ``w.loss_fn``. Keras: ``model.fit(..., callbacks=[nanlab.watch(model)])``, or ``with nanlab.watch(model,
    optimizer, loss_fn) as w:`` around a GradientTape loop whose step runs inside ``with w.step(x, y):``. Either
    framework: ``with nanlab.watch(training):`` around ``torch_loop.train`` / ``keras_loop.train``.
    """
    training = None
    if _is_training(model):
        training, model, optimizer, loss_fn = model, model.model, model.optimizer, model.loss_fn
    if _from_framework(model, "torch"):
        from nanlab.watch_torch import Watch

        return Watch(model, optimizer, loss_fn, training=training)
    if _from_framework(model, "keras") or _from_framework(model, "tensorflow"):
        from nanlab.watch_keras import KerasWatch

        return KerasWatch(model, optimizer, loss_fn, training=training)
    raise NanlabError(f"nanlab.watch needs a torch.nn.Module, a keras.Model or a nanlab Training, "
                      f"got {type(model).__name__}")


def scan(x, y=None, num_classes=None, progress=True):
    """Find non-finite values, bad labels, unnormalised inputs, all-zero rows, huge targets (``nanlab.scan_data.scan``)."""
    from nanlab.scan_data import scan as scan_data

    return scan_data(x, y, num_classes, progress)


def _from_framework(value, framework: str) -> bool:
    return any(cls.__module__.split(".")[0] == framework for cls in type(value).__mro__)


def _is_training(value) -> bool:
    return type(value).__name__ == "Training" and type(value).__module__ in ("nanlab.torch_loop", "nanlab.keras_loop")
