"""``nanlab.watch(trainer)`` for a Lightning ``Trainer``: the torch watch, driven by a Lightning ``Callback``.

``nanlab.watch(trainer)`` appends a ``WatchCallback`` to ``trainer.callbacks`` and returns it;
``Trainer(callbacks=[WatchCallback()])`` is the same. Nothing else in the user's code changes, and nothing is
patched: every event below is a public ``Callback`` hook.

Why these hooks (Lightning 2.6, automatic optimization). Lightning runs ``training_step`` and the backward pass
*inside* ``optimizer.step(closure)``, so a torch optimizer step pre-hook fires before the batch's backward, with no
gradients yet. The order within one optimizer step is::

    on_train_batch_start(batch, batch_idx)       per micro-batch: record it   -> watch.record_step
      optimizer.step(closure):
        training_step -> on_before_backward(loss)  per micro-batch: its loss  -> watch.add_loss
                      -> backward -> on_after_backward
        (16-mixed: scaler.unscale_)
        on_before_optimizer_step(optimizer)      after every backward, before clipping and the update: the check
        gradient clipping, then the update       (16-mixed: scaler.step, scaler.update)
    on_train_batch_end                           too late to act: the update is applied

- The check (``watch.before_update``, ``Watch(check_at="host")``) runs in ``on_before_optimizer_step``: the
  gradients of every accumulated micro-batch are there, clipping has not yet spread one NaN into all of them, and
  raising there leaves the weights and the optimizer state from before the bad step.
- The loss is taken in ``on_before_backward``, the only hook that sees ``training_step``'s loss before the update
  (``on_after_backward`` gets none; ``outputs`` of ``on_train_batch_end`` and ``trainer.callback_metrics`` come
  after the update, and the latter only holds what the user logged). Lightning hands it divided by
  ``accumulate_grad_batches`` and, under ``16-mixed``, multiplied by the loss scale; the watch undoes both so its
  history holds what ``training_step`` returned. No host read there: the loss joins the step's one read.
- The replay re-runs ``training_step(batch, batch_idx)`` (where the loss lives, not only ``forward``), recorded by
  reference at ``on_train_batch_start`` with the RNG state it will run with, inside the precision plugin's own
  ``train_step_context`` (autocast under ``bf16-mixed`` / ``16-mixed``). Each micro-batch of an accumulated update
  is recorded, so the report names the micro-batch and its samples. The replay calls the ``LightningModule``
  directly, never through a ``DistributedDataParallel`` wrapper (no collectives), with ``self.log`` off (see
  ``_training_step``). Other side effects of ``training_step`` (a torchmetrics metric's ``update``, a counter)
  happen once more, at a bad step only.

The policies: ``raise`` propagates ``NonFiniteError`` out of ``trainer.fit`` (Lightning calls ``on_exception``,
where the watch detaches, and re-raises it); ``stop`` drops the update and sets ``trainer.should_stop``; ``skip``
drops the update by setting the gradients to None before the optimizer runs (it skips parameters without one) and
trains on. Precision plugins: ``bf16-mixed`` needs nothing more; ``16-mixed`` brings a ``GradScaler``
(``trainer.precision_plugin.scaler``), handed to the watch, which then checks in the scaler's ``update`` as in a
plain loop: a step the scaler skips is expected now and then, persistent skipping is a fault. On the CPU Lightning
turns ``"16-mixed"`` into ``"bf16-mixed"`` (no scaler).

Under Lightning's DDP strategies the watch is given ``trainer.strategy.model`` (the ``DistributedDataParallel``
wrapper), so that at a bad step the ranks agree as the torch watch's DDP support describes: every rank stops (or
raises) at the same step with the report of the rank where the value appeared. Tested on two CPU processes (gloo)
with ``ddp_fork``, and as a user launches it (``python train.py``, tests/test_host_ddp_lightning.py):
``strategy="ddp"`` (Lightning re-runs the script for rank 1) with ``raise`` (``NonFiniteError`` out of ``fit`` on
every rank, both processes end with it, no abort) and ``stop``, and ``strategy="ddp_spawn"`` with ``stop``. Under
``ddp_spawn`` a ``raise`` ends the run as any exception in a spawned rank does: ``torch.multiprocessing`` terminates
the other ranks (SIGTERM) as soon as the first one exits with the error, and the script gets a
``ProcessRaisedException`` holding the report's text; ``stop`` ends every rank cleanly there. A non-finite loss with
finite reduced gradients is then logged, not raised: a callback cannot fold the loss into the gradients as
``watch.loss_fn`` does.

Manual optimization (``automatic_optimization = False``): ``training_step`` steps the optimizers itself, so it is
not replayed (that would update the weights); the check still runs before every ``optimizer.step()`` the user
calls, and the replay then re-runs the forward passes recorded on the ``LightningModule`` (``self(x)``) only.
A ``training_step`` that takes ``dataloader_iter`` is not replayed either (the iterator is consumed).
"""
from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from nanlab.frameworks.torch.hosts import HostSurface
from nanlab.errors import NanlabError
from nanlab.frameworks.torch.watch import Watch
from nanlab.report import NonFiniteReport
from nanlab.watching import WatchPolicy

INSTALL_HINT = "pip install 'nanlab[integrations]'"
try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
except ModuleNotFoundError as missing:  # only Lightning itself missing is the one-line message
    if (missing.name or "").split(".")[0] != "lightning":
        raise
    raise NanlabError(f"Lightning is not installed; install it with: {INSTALL_HINT}") from None

__all__ = ["WatchCallback", "watch"]
OPTIONS: tuple[str, ...] = ()
# What self.log warns under Trainer(barebones=True), which the replay sets while it re-runs training_step
BAREBONES_LOG_WARNING = r".*self\.log\(\)` but `Trainer\(barebones=True\)`"


class WatchCallback(HostSurface, pl.Callback):
    """A Lightning ``Callback`` that runs ``nanlab.watch`` on the ``LightningModule`` being fitted.

    ``WatchCallback(on_nonfinite="raise", max_skips=5, overflow_patience=10, min_loss_scale=1.0)``: the keywords
    of ``nanlab.watch`` (a ``WatchPolicy``). Attributes as on every watch: ``step``, ``history``, ``report``,
    ``stopped``, ``policy``; ``watch`` is the torch ``Watch`` of the current (or last) ``fit``, None before one.
    """

    def __init__(self, *, on_nonfinite: str = "raise", max_skips: int = 5, overflow_patience: int = 10,
                 min_loss_scale: float = 1.0, policy: WatchPolicy | None = None):
        super().__init__()
        self.policy = policy or WatchPolicy(on_nonfinite=on_nonfinite, max_skips=max_skips,
                                            overflow_patience=overflow_patience, min_loss_scale=min_loss_scale)
        self.watch: Watch | None = None
        self._attached = False
        self._not_replayed: str | None = None  # why training_step cannot be replayed, when it cannot
        self._takes_batch_idx = True
        self._loss_factor = 1

    # -- the surface every watch shares ----------------------------------------------------------------------------
    # -- Lightning's events ----------------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wrapped = trainer.strategy.model
        model = wrapped if isinstance(wrapped, DistributedDataParallel) else pl_module
        optimizer = trainer.optimizers[0] if len(trainer.optimizers) == 1 else None
        scaler = getattr(trainer.precision_plugin, "scaler", None)  # 16-mixed's GradScaler, else None
        self.watch = Watch(model, optimizer, policy=self.policy, scaler=scaler, check_at="host")
        step = pl_module.training_step
        self._not_replayed = None
        if not pl_module.automatic_optimization:
            self._not_replayed = "under manual optimization it steps the optimizers itself"
        elif is_param_in_hook_signature(step, "dataloader_iter", explicit=True):
            self._not_replayed = "it takes a dataloader_iter, which it consumes"
        self._takes_batch_idx = is_param_in_hook_signature(step, "batch_idx", min_args=2)
        # Lightning divides each micro-batch's loss by accumulate_grad_batches (automatic optimization only)
        self._loss_factor = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
        if self._not_replayed is not None:
            self.watch.host_notes.append(self._not_replayed_note)
        self.watch.__enter__()
        self._attached = True

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._attached and self._not_replayed is None:
            args = (batch, batch_idx) if self._takes_batch_idx else (batch,)
            step = functools.partial(_training_step, trainer, pl_module, trainer.precision_plugin)
            self.watch.record_step(step, args)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self._attached:
            self.watch.add_loss(self._training_step_loss(loss))

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        if self._attached:
            self.watch.before_update()  # raise: NonFiniteError out of optimizer.step, before the update
            self._stop_if_stopped(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch: Any,
                           batch_idx: int) -> None:
        if self._attached:
            self._stop_if_stopped(trainer)  # under 16-mixed the check runs in scaler.update, after the hook above

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._detach(None)  # may raise NonFiniteError: a weight left non-finite (see Watch.__exit__)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._detach(exception)

    # -- helpers -----------------------------------------------------------------------------------------------------
    def _training_step_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """``training_step``'s loss from the one Lightning backpropagates: unscaled, times the accumulation."""
        loss = loss.detach()
        scaler = self.watch.scaler
        if scaler is not None:  # scaler.scale multiplies by the current scale: a tensor op, no host read
            loss = loss / scaler.scale(torch.ones((), dtype=loss.dtype, device=loss.device))
        return loss * self._loss_factor if self._loss_factor != 1 else loss

    def _stop_if_stopped(self, trainer: pl.Trainer) -> None:
        if self.watch.stopped:
            trainer.should_stop = True

    def _not_replayed_note(self, report: NonFiniteReport, loss: float | None) -> str:
        """A bad step's note (``Watch.host_notes``) when ``training_step`` could not be replayed."""
        return (f"training_step was not replayed ({self._not_replayed}): the replay re-ran only the forward passes "
                "of the LightningModule, so a fault in the loss or the backward pass is not located.")

    def _detach(self, exception: BaseException | None) -> None:
        if not self._attached:
            return
        self._attached = False
        if exception is None:
            self.watch.__exit__(None, None, None)
        else:
            self.watch.__exit__(type(exception), exception, exception.__traceback__)


def _training_step(trainer: pl.Trainer, module: pl.LightningModule, precision, *args):
    """One micro-batch's training computation as Lightning runs it (``Strategy.training_step`` without its
    ``DistributedDataParallel`` redirection): the replay re-runs this.

    With ``self.log`` off: the step was logged when it ran, and a second ``self.log`` from the hook the replay runs
    in (``on_before_optimizer_step``) would leave its value in the logged metrics for the rest of training. The
    public switch that turns ``self.log`` into a no-op is ``trainer.barebones``, set for the replay's duration and
    restored, with the warning ``self.log`` gives under it silenced.
    """
    barebones = trainer.barebones
    trainer.barebones = True
    try:
        with warnings.catch_warnings(), precision.train_step_context():
            warnings.filterwarnings("ignore", message=BAREBONES_LOG_WARNING)
            return module.training_step(*args)
    finally:
        trainer.barebones = barebones


def watch(trainer, optimizer=None, loss_fn=None, *, policy: WatchPolicy, **options) -> WatchCallback:
    """``nanlab.watch(trainer)`` for a ``lightning.Trainer``: append a ``WatchCallback`` to its callbacks and
    return it. The optimizer and the loss are the trainer's own (``configure_optimizers``, ``training_step``)."""
    if optimizer is not None or loss_fn is not None:
        raise NanlabError("nanlab.watch(trainer) takes the optimizer from configure_optimizers and the loss from "
                          "training_step: pass only the Trainer")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise NanlabError(f"unknown nanlab.watch option {unknown[0]!r} for a Lightning Trainer")
    callback = WatchCallback(policy=policy)
    trainer.callbacks.append(callback)
    return callback
