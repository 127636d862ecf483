"""nanlab: reproduce, diagnose and fix the well-known causes of NaN/Inf loss, in PyTorch and TensorFlow/Keras.

``import nanlab`` imports neither framework; each is loaded when a run first needs it.
"""
from nanlab.errors import NanlabError, NonFiniteError
from nanlab.registry import Cause, Fix, get_cause, list_causes
from nanlab.reproduce import ContractRow, check_contract, reproduce, verify
from nanlab.run import Run

__version__ = "0.1.0"
POLICY_KEYWORDS = ("on_nonfinite", "max_skips", "overflow_patience", "min_loss_scale", "spike_threshold")

__all__ = ["Cause", "ContractRow", "Fix", "NanlabError", "NonFiniteError", "Run", "check_contract", "get_cause",
           "list_causes", "reproduce", "scan", "verify", "watch", "__version__"]


def watch(model, optimizer=None, loss_fn=None, *, on_nonfinite="raise", max_skips=5, overflow_patience=10,
          min_loss_scale=1.0, spike_threshold=None, **options):
    """Watch training for the first non-finite loss, gradient or weight; raise ``NonFiniteError`` with a report.

    PyTorch: ``with nanlab.watch(model, optimizer, loss_fn) as w:`` around your loop, computing the loss with
    ``w.loss_fn``. Keras: ``model.fit(..., callbacks=[nanlab.watch(model)])``, or ``with nanlab.watch(model,
    optimizer, loss_fn) as w:`` around a GradientTape loop. Either framework: ``with nanlab.watch(training):``
    around a nanlab ``Training`` and its loop's ``train``. The keywords are the ``nanlab.watching.WatchPolicy``
    (what to do at a non-finite step, how much loss-scaler skipping is tolerated, and, with ``spike_threshold``, the
    warning before the NaN: loss and gradient-norm spikes logged as they happen), the same in every framework;
    ``options`` are a framework watch's own (PyTorch: ``scaler``).
    """
    from nanlab.frameworks import framework_of, host_of, list_frameworks
    from nanlab.training import Training
    from nanlab.watching import WatchPolicy

    policy = WatchPolicy(on_nonfinite=on_nonfinite, max_skips=max_skips, overflow_patience=overflow_patience,
                         min_loss_scale=min_loss_scale, spike_threshold=spike_threshold)
    hosted = host_of(model)
    if hosted is not None:  # a trainer nanlab did not write: its adapter plugs the watch into the trainer's events
        framework, host = hosted
        module = host.module()
        _check_options(options, module.OPTIONS, f"{framework.title} ({host.name})")
        return module.watch(model, optimizer, loss_fn, policy=policy, **options)
    training = None
    if isinstance(model, Training):
        training, model, optimizer, loss_fn = model, model.model, model.optimizer, model.loss_fn
    # A list of variables (low-level TensorFlow) belongs to the framework of its first element.
    framework = framework_of(model[0] if isinstance(model, (list, tuple)) and model else model)
    if framework is None:
        accepted = ", ".join(framework.watchable for framework in list_frameworks())
        raise NanlabError(f"nanlab.watch needs {accepted} or a nanlab Training, got {type(model).__name__}")
    module = framework.module("watch")
    _check_options(options, module.OPTIONS, framework.title)
    return module.watch(model, optimizer, loss_fn, training=training, policy=policy, **options)


def _check_options(options: dict, accepted: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        valid = ", ".join(POLICY_KEYWORDS + tuple(accepted))
        raise NanlabError(f"unknown nanlab.watch option {unknown[0]!r} for {where}; valid: {valid}")


def scan(x, y=None, num_classes=None, progress=True, ignore_index=-100):
    """Find non-finite values, bad labels, unnormalised inputs, all-zero rows, huge targets (``nanlab.scan_data.scan``).

    ``ignore_index`` (PyTorch's default, -100) marks label positions that are padding, not bad labels.
    """
    from nanlab.scan_data import scan as scan_data

    return scan_data(x, y, num_classes, progress, ignore_index)
