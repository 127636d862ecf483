"""``nanlab.watch(trainer)`` for a Transformers ``Trainer``: the torch watch, driven by a ``TrainerCallback``.

``nanlab.watch(trainer)`` adds a ``WatchCallback`` with ``trainer.add_callback`` and returns it;
``Trainer(callbacks=[WatchCallback()])`` is the same, but for a loss computed outside the model (below). Nothing
else in the user's code changes.

Why these events (transformers 5). The Trainer makes its optimizer inside ``train()``, so the watch is made at
``on_train_begin``, from the callback's ``model`` and ``optimizer`` (accelerate's ``AcceleratedOptimizer``, a
wrapper that skips ``Optimizer.__init__``: the watch takes the torch optimizer inside it, ``.optimizer``). One
optimizer step of the Trainer::

    on_step_begin
      per micro-batch: training_step -> compute_loss -> model(**inputs)   the watch records the forward pass
                       (-> compute_loss_func(outputs, labels, ...))      the loss outside the model, recorded
                       -> accelerator.backward(loss)
    clip_grad_norm_                        spreads one NaN into every gradient (the replay still finds the op)
    on_pre_optimizer_step                  the check: watch.before_update, before the update
    optimizer.step(); on_optimizer_step; lr_scheduler.step(); zero_grad; on_step_end   (too late to act)

The policies: ``raise`` propagates ``NonFiniteError`` out of ``trainer.train()``, with the weights and the optimizer
state from before the bad step; ``stop`` drops the update and sets ``control.should_training_stop``; ``skip`` drops
the update (the gradients are set to None: the optimizer skips parameters without one; the learning-rate schedule
still advances, as it does for a step the Trainer's loss scaler skips) and trains on.

The loss: a model given ``labels`` computes it in its forward, where the watch reads it. With ``compute_loss_func``
(or the Trainer's label smoother, ``label_smoothing_factor``) the loss is computed outside the model from the
model's outputs and the labels the Trainer took out of the inputs: ``nanlab.watch(trainer)`` hands the Trainer the
watch's recording ``loss_fn`` in its place for the length of ``train()`` (``private.replace_attribute``), so the
loss joins the step's check and the replay recomputes it from the recorded outputs' inputs and labels. The callback
form cannot reach the Trainer: there the check reads the gradients alone, and the report says so.

Gradient accumulation: every forward pass of the update is recorded by reference, and the report names the
micro-batch that went bad and its samples. Mixed precision: ``bf16`` needs nothing more (the replay runs the model's
own autocast); ``fp16`` (CUDA only) brings accelerate's ``GradScaler`` (``trainer.accelerator.scaler``), handed to
the watch, which then checks in the scaler's ``update`` as in a plain loop: a step the scaler skips is expected now
and then, persistent skipping is a fault.

Under DDP (``torchrun --nproc_per_node N train.py`` or ``accelerate launch``) the watch is given the Trainer's
``DistributedDataParallel`` wrapper (``trainer.model_wrapped``, made by ``train()`` before ``on_train_begin``), so
that at a bad step the ranks agree as the torch watch's DDP support describes: a NaN on one rank reaches every rank's
gradients through DDP's reduction, every rank raises, stops or skips at the same step with the report of the rank
where it appeared, and the replay runs the bare model on each rank (no collectives). The callbacks form is handed only
the bare model: it takes the default process group when ``args.parallel_mode`` is DDP (not FSDP or DeepSpeed). A
model that computes its loss in forward (every Transformers model given ``labels``) is not folded into the gradients
(``Watch``'s docstring): a non-finite loss on one rank with finite reduced gradients is logged, not raised, so that no
rank leaves the others waiting in DDP's next reduction. Tested on two CPU processes under gloo with torchrun.

``TrainingArguments(torch_compile=True)``: accelerate compiles the model in ``train()``; the watch's hooks go on the
compiled wrapper (``trainer.model_wrapped``), where they run outside the graph (no graph break, no recompile: tested
with dynamo's counters), and a bad step is replayed eagerly on the original module. The callbacks form is handed
only the module inside the compiled one: its hooks there break the graph (measured: 2 graph breaks on
``torch.get_rng_state``, 8 frames instead of 1), so it logs a warning that points to ``nanlab.watch(trainer)``.
Compiled and DDP together (accelerate compiles around the DDP wrapper) is not tested.

The Trainer's ``logging_nan_inf_filter`` (on by default) logs a non-finite loss as the mean of the finite losses
since the last log (0.0 right after a log), while every update is still applied; when it would have hidden this
step's loss, the report's note says so.
"""
from __future__ import annotations

import math
import sys
import weakref

from nanlab.frameworks.torch.hosts import HostSurface
from nanlab.errors import NanlabError

INSTALL_HINT = "pip install 'nanlab[integrations]'"
try:
    import transformers
except ModuleNotFoundError as missing:  # pragma: no cover - the Host only dispatches here when it is imported
    if missing.name != "transformers":
        raise
    raise NanlabError(f"the Transformers integration needs transformers; install it with: {INSTALL_HINT}") from None

import torch  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from transformers.training_args import ParallelMode  # noqa: E402

from nanlab.frameworks.torch import private  # noqa: E402
from nanlab.frameworks.torch.watch import Watch  # noqa: E402
from nanlab.report import NonFiniteReport  # noqa: E402
from nanlab.watching import WatchPolicy  # noqa: E402
from nanlab.watching.core import LOG  # noqa: E402

OPTIONS: tuple[str, ...] = ()
# The Trainer's attributes that compute a loss outside the model, called (outputs, labels, **kwargs); the first
# that is set is the one the Trainer uses (Trainer.compute_loss).
OUTSIDE_LOSSES = ("compute_loss_func", "label_smoother")


class WatchCallback(HostSurface, transformers.TrainerCallback):
    """The watch as a ``TrainerCallback``: ``Trainer(callbacks=[WatchCallback(on_nonfinite="stop")])``, or what
    ``nanlab.watch(trainer)`` returns.

    The keywords are the ``WatchPolicy`` (``on_nonfinite``, ``max_skips``, ``overflow_patience``,
    ``min_loss_scale``). Attributes, as every watch's: ``step``, ``history``, ``report``, ``stopped``, ``policy``;
    ``watch`` is the torch ``Watch`` of the current (or last) ``train()``.
    """

    def __init__(self, *, on_nonfinite: str = "raise", max_skips: int = 5, overflow_patience: int = 10,
                 min_loss_scale: float = 1.0, policy: WatchPolicy | None = None, trainer=None):
        self.policy = policy or WatchPolicy(on_nonfinite=on_nonfinite, max_skips=max_skips,
                                            overflow_patience=overflow_patience, min_loss_scale=min_loss_scale)
        self._trainer = weakref.ref(trainer) if trainer is not None else None
        self.watch: Watch | None = None
        self._restore_loss = None
        self._outside_loss: str | None = None

    @property
    def trainer(self):
        """The Trainer of ``nanlab.watch(trainer)``, None in the callbacks form. Held weakly: the Trainer holds this
        callback, and a reference back would make a cycle that keeps the Trainer, its ``DistributedDataParallel``
        wrapper and the process group alive after the script lets go of them, until the garbage collector happens to
        run. A process group still alive at interpreter exit keeps gloo's threads running, and
        ``destroy_process_group()`` does not stop them while a reference remains: at exit a rank may then abort
        (``terminate called without an active exception``, SIGABRT)."""
        return self._trainer() if self._trainer is not None else None

    # -- the Trainer's events ---------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None:
            raise NanlabError("nanlab.watch: the Trainer handed its callbacks no model at on_train_begin")
        self._detach()
        self._outside_loss = next((name for name in OUTSIDE_LOSSES if getattr(self.trainer, name, None) is not None),
                                  None)
        recorded = self._outside_loss is not None and private.replaceable(self.trainer, self._outside_loss)
        scaler = getattr(getattr(self.trainer, "accelerator", None), "scaler", None)
        self.watch = Watch(_watched_model(self.trainer, model), _torch_optimizer(optimizer),
                           getattr(self.trainer, self._outside_loss) if recorded else None,
                           policy=self.policy, check_at="host", scaler=scaler)
        if self.watch._group is None:  # the callbacks form under DDP: the wrapper is out of its reach, the group not
            self.watch._group = _ddp_group(args)
        if self.trainer is None and getattr(args, "torch_compile", False):
            LOG.warning("nanlab.watch: a WatchCallback in Trainer(callbacks=[...]) with torch_compile=True hooks the "
                        "module inside the compiled one, where dynamo breaks the graph on its hooks (2 graph breaks "
                        "measured on a tiny Llama); nanlab.watch(trainer) hooks the compiled wrapper and adds none")
        self.watch.host_notes.append(self._note(args, unrecorded=None if recorded else self._outside_loss))
        self.watch.__enter__()
        if recorded:
            self._restore_loss = private.replace_attribute(self.trainer, self._outside_loss, self.watch.loss_fn)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.watch is None:
            return
        try:
            self.watch.before_update()
        except BaseException:
            self._detach(*sys.exc_info())
            raise
        if self.watch.stopped:
            control.should_training_stop = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.watch is not None and self.watch.stopped:
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self._detach()

    # -- helpers ------------------------------------------------------------------------------------------------------
    def _detach(self, kind=None, error=None, traceback=None) -> None:
        if self._restore_loss is not None:
            self._restore_loss()
            self._restore_loss = None
        if self.watch is not None and self.watch._handles:
            self.watch.__exit__(kind, error, traceback)

    def _note(self, args, unrecorded: str | None):
        """The report's remarks only the Trainer's host knows: its logging filter, a loss the watch did not see."""

        def note(report: NonFiniteReport, loss: float | None) -> str | None:
            sentences = []
            if loss is not None and not math.isfinite(loss) and getattr(args, "logging_nan_inf_filter", False):
                sentences.append(
                    "Without the watch the Trainer would have applied this update and trained on: its "
                    f"logging_nan_inf_filter (on by default) logs a non-finite loss ({loss:g} here) as the mean of "
                    "the finite losses since the last log (0.0 right after a log), so its log would have shown a "
                    "finite loss beside grad_norm nan.")
            if self.trainer is None and loss is None:
                sentences.append(
                    "The model returned no loss: a loss the Trainer computes outside the model (compute_loss_func, "
                    "label smoothing) is out of a callback's reach; nanlab.watch(trainer) checks and replays it.")
            elif unrecorded is not None:
                sentences.append(f"The Trainer's {unrecorded}, which computes the loss outside the model, could not "
                                 "be recorded (not a plain attribute of this Trainer): the gradients were checked, "
                                 "the loss was not.")
            return " ".join(sentences) or None

        return note


def _watched_model(trainer, model):
    """The module the watch hooks: the Trainer's own wrapper of ``model`` where ``train()`` made one before
    ``on_train_begin`` (``trainer.model_wrapped``), else ``model`` (the callbacks form: the Trainer hands callbacks
    only the bare model).

    - ``DistributedDataParallel`` (``torchrun`` / ``accelerate launch``): the watch reads the process group from it,
      so that at a bad step the ranks combine their status and every rank raises, stops or skips alike with one
      report; the replay runs the bare model (no collectives).
    - ``torch.compile`` (``TrainingArguments(torch_compile=True)``): the hooks go on the compiled wrapper, where they
      run outside the graph (no graph break, no recompile); the replay runs the original module eagerly. Compiled
      around DDP (accelerate compiles last), the hooks go on the DDP wrapper inside it (not tested).
    - anything else (DataParallel, DeepSpeed, FSDP): ``model``, as before (not tested under the watch).
    """
    wrapped = getattr(trainer, "model_wrapped", None) if trainer is not None else None
    if not isinstance(wrapped, torch.nn.Module) or wrapped is model:
        return model
    inner = private.original_module(wrapped)
    if isinstance(inner, DistributedDataParallel) and inner.module is model:
        return inner
    if isinstance(wrapped, DistributedDataParallel) and wrapped.module is model:
        return wrapped
    if private.is_compiled(wrapped) and inner is model:
        return wrapped
    return model


def _ddp_group(args):
    """The process group of the Trainer's DDP run, for the callbacks form (no wrapper at hand): the default group
    when the Trainer trains data-parallel over several processes (``args.parallel_mode``), neither FSDP nor
    DeepSpeed; else None."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    if args.parallel_mode != ParallelMode.DISTRIBUTED or args.fsdp or args.deepspeed:
        return None
    return torch.distributed.group.WORLD if torch.distributed.get_world_size() > 1 else None


def _torch_optimizer(optimizer):
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (which skips ``Optimizer.__init__``)."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


def watch(trainer, optimizer=None, loss_fn=None, *, policy: WatchPolicy, **options) -> WatchCallback:
    """``nanlab.watch(trainer)`` for a ``transformers.Trainer``: adds a ``WatchCallback`` and returns it."""
    if options:
        raise NanlabError(f"unknown nanlab.watch option {sorted(options)[0]!r} for the Transformers Trainer")
    if optimizer is not None or loss_fn is not None:
        raise NanlabError("nanlab.watch(trainer) takes the Trainer alone: it makes its optimizer in train() and "
                          "computes its loss itself")
    while any(isinstance(callback, WatchCallback) for callback in trainer.callback_handler.callbacks):
        trainer.remove_callback(WatchCallback)  # watched twice: the last watch replaces the first
    callback = WatchCallback(policy=policy, trainer=trainer)
    trainer.add_callback(callback)
    return callback
