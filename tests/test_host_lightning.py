"""nanlab.watch(trainer) for a Lightning Trainer, tested the way a Lightning user trains: a LightningModule with
training_step and configure_optimizers, a DataLoader, and Trainer(...).fit.

The model is the issue's case: each unit's standard deviation over time, written by hand as sqrt(mean(d * d)). A
sensor stuck at one value makes the variance exactly 0, where the square root's derivative is infinite: the forward
pass is finite, the gradient NaN. Lightning's detect_anomaly blames MulBackward0, the op after the root.
"""
import json
import math
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import nanlab  # noqa: E402

BATCH = 8
STEPS = 4


class SensorClassifier(L.LightningModule):
    """Each time step through a linear layer, the standard deviation over time of every unit, then a head."""

    def __init__(self, lr=0.1, dropout=0.0):
        super().__init__()
        self.lr = lr
        self.per_step = nn.Linear(3, 8)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.dropout(self.per_step(x))
        centred = h - h.mean(dim=1, keepdim=True)
        return self.head(torch.sqrt((centred * centred).mean(dim=1)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class LossLog(L.Callback):
    """What the user's training_step returned, batch by batch."""

    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def sensor_data(stuck=(), n=BATCH * STEPS, seed=0):
    """(n, 5 time steps, 3 sensors) readings and binary labels; the samples in ``stuck`` read one value throughout."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, 3, generator=generator)
    y = torch.randint(0, 2, (n,), generator=generator)
    for i in stuck:
        x[i] = x[i, 0]
    return x, y


def loader(x, y, batch_size=BATCH):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def make_trainer(callbacks=(), **kwargs):
    kwargs.setdefault("max_steps", STEPS)
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=list(callbacks), **kwargs)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return SensorClassifier(**kwargs)


def weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def trained_weights(data, steps, seed=0, **trainer_kwargs):
    """The weights of a plain run (no watch) after ``steps`` optimizer steps."""
    model = make_model(seed)
    make_trainer(max_steps=steps, **trainer_kwargs).fit(model, loader(*data))
    return weights(model)


# -- attaching ----------------------------------------------------------------------------------------------------
def test_watch_of_a_trainer_is_a_lightning_callback_in_its_callbacks():
    trainer = make_trainer()
    callback = nanlab.watch(trainer)
    assert isinstance(callback, L.pytorch.Callback)
    assert callback in trainer.callbacks
    assert callback.report is None and not callback.stopped


def test_a_root_at_zero_raises_before_the_update_and_is_named_sqrt_at_zero():
    data = sensor_data(stuck=[BATCH + 5])  # in the second batch: one healthy step first
    # The complaint: Lightning's own tool blames MulBackward0, the op after the square root.
    with pytest.raises(RuntimeError, match="MulBackward0"):
        make_trainer(detect_anomaly=True).fit(make_model(), loader(*data))
    model, trainer = make_model(), make_trainer()
    nanlab.watch(trainer)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        trainer.fit(model, loader(*data))
    report = raised.value.report
    assert (report.step, report.phase, report.op, report.cause) == (1, "backward", "sqrt", "sqrt-at-zero"), \
        str(report)
    assert report.samples == [5], str(report)
    assert same_weights(weights(model), trained_weights(data, steps=1))  # the weights from before the bad step
    assert not model._forward_pre_hooks and not model._forward_hooks  # the watch detached on the way out


def test_the_callbacks_form_works_too():
    from nanlab.frameworks.torch.hosts.lightning import WatchCallback

    data = sensor_data(stuck=[2])
    watch = WatchCallback()
    with pytest.raises(nanlab.NonFiniteError) as raised:
        make_trainer(callbacks=[watch]).fit(make_model(), loader(*data))
    assert raised.value.report is watch.report
    assert (watch.report.step, watch.report.cause, watch.report.samples) == (0, "sqrt-at-zero", [2])


def test_stop_ends_fit_with_the_weights_from_before_the_bad_step():
    data = sensor_data(stuck=[2 * BATCH + 1])
    model, trainer = make_model(), make_trainer()
    watch = nanlab.watch(trainer, on_nonfinite="stop")
    trainer.fit(model, loader(*data))
    assert watch.stopped and trainer.should_stop
    assert (watch.report.step, watch.report.cause) == (2, "sqrt-at-zero")
    assert same_weights(weights(model), trained_weights(data, steps=2))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skip_drops_the_bad_update_and_trains_on():
    """Plain SGD keeps no state: dropping batch 1's update is training on the other batches only. The replay of
    the bad step re-ran training_step, but what the user logs is still each step's own value."""
    data = sensor_data(stuck=[BATCH + 4])
    model, log = make_model(), LossLog()
    trainer = make_trainer(callbacks=[log])
    watch = nanlab.watch(trainer, on_nonfinite="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader(*data))
    assert trainer.global_step == STEPS and not watch.stopped
    assert watch.history.skipped_steps == [1] and watch.report.cause == "sqrt-at-zero"
    keep = torch.cat([torch.arange(0, BATCH), torch.arange(2 * BATCH, STEPS * BATCH)])
    assert same_weights(weights(model), trained_weights((data[0][keep], data[1][keep]), steps=STEPS - 1))
    assert trainer.callback_metrics["train_loss"].item() == log.losses[-1]
    assert watch.history.losses == [log.losses[0]] + log.losses[2:]
    assert not [w for w in caught if "self.log" in str(w.message)]


def test_gradient_accumulation_names_the_micro_batch_and_its_sample():
    data = sensor_data(stuck=[BATCH + 6])  # the second micro-batch of the first update
    model, trainer = make_model(), make_trainer(accumulate_grad_batches=2)
    nanlab.watch(trainer)
    initial = weights(model)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        trainer.fit(model, loader(*data))
    report = raised.value.report
    assert (report.step, report.micro_batch, report.samples, report.cause) == (0, 1, [6], "sqrt-at-zero"), \
        str(report)
    assert same_weights(weights(model), initial)


class ManualSensorClassifier(SensorClassifier):
    """The same model under manual optimization (a GAN's style): training_step steps the optimizer itself."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.log("train_loss", loss)


def test_manual_optimization_is_checked_before_each_optimizer_step():
    data = sensor_data(stuck=[BATCH + 5])
    torch.manual_seed(0)
    model, trainer = ManualSensorClassifier(), make_trainer()
    nanlab.watch(trainer)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        trainer.fit(model, loader(*data))
    report = raised.value.report
    assert (report.step, report.phase) == (1, "backward")
    assert "training_step was not replayed" in report.note  # it would step the optimizer again
    torch.manual_seed(0)
    one_step = ManualSensorClassifier()
    make_trainer(max_steps=1).fit(one_step, loader(*data))
    assert same_weights(weights(model), weights(one_step))


def test_watch_of_a_trainer_takes_nothing_but_the_trainer():
    with pytest.raises(nanlab.NanlabError, match="configure_optimizers"):
        nanlab.watch(make_trainer(), torch.optim.SGD(make_model().parameters(), lr=0.1))
    with pytest.raises(nanlab.NanlabError, match="unknown nanlab.watch option 'scaler'"):
        nanlab.watch(make_trainer(), scaler=torch.amp.GradScaler("cpu"))


def test_without_lightning_the_callback_says_what_to_install(monkeypatch):
    import importlib
    import sys

    monkeypatch.delitem(sys.modules, "nanlab.frameworks.torch.hosts.lightning", raising=False)
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    with pytest.raises(nanlab.NanlabError, match=r"^Lightning is not installed; install it with: pip install "
                                                 r"'nanlab\[integrations\]'$"):
        importlib.import_module("nanlab.frameworks.torch.hosts.lightning")


# -- no false alarm -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true"])
def test_a_healthy_run_is_bit_identical_with_and_without_the_watch(precision):
    data = sensor_data()
    runs = []
    for watched in (False, True):
        model, log = make_model(dropout=0.2), LossLog()  # dropout: the watch must not touch the RNG
        trainer = make_trainer(callbacks=[log], precision=precision, accumulate_grad_batches=2, max_steps=2)
        watch = nanlab.watch(trainer) if watched else None
        trainer.fit(model, loader(*data))
        runs.append((weights(model), log.losses, watch))
    (plain, plain_losses, _), (watched, watched_losses, watch) = runs
    assert same_weights(plain, watched) and plain_losses == watched_losses
    assert all(math.isfinite(loss) for loss in plain_losses)
    assert watch.report is None and watch.step == 2
    # Lightning divides each micro-batch's loss by accumulate_grad_batches; the watch's history holds the mean of
    # what training_step returned
    assert watch.history.losses == pytest.approx([plain_losses[0] + plain_losses[1],
                                                  plain_losses[2] + plain_losses[3]])


# -- Lightning's precision plugins --------------------------------------------------------------------------------
def test_bf16_mixed_is_localised_under_autocast():
    """precision="16-mixed" on the CPU is bf16-mixed in Lightning (fp16 with a GradScaler is for CUDA)."""
    data = sensor_data(stuck=[BATCH + 1])
    model, trainer = make_model(), make_trainer(precision="16-mixed")
    assert trainer.precision == "bf16-mixed"
    nanlab.watch(trainer)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        trainer.fit(model, loader(*data))
    report = raised.value.report
    assert (report.step, report.op, report.cause, report.samples) == (1, "sqrt", "sqrt-at-zero", [1]), str(report)
    assert same_weights(weights(model), trained_weights(data, steps=1, precision="bf16-mixed"))


def test_fp16_with_lightnings_grad_scaler_skips_like_the_plain_loop_then_raises():
    """fp16 autocast with Lightning's GradScaler, forced onto the CPU through its MixedPrecision plugin. The scaler
    skips each non-finite step itself; once skipping persists (overflow_patience) the watch raises, and no update
    was ever applied."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    data = sensor_data(stuck=range(0, BATCH * STEPS, BATCH))  # one stuck sensor in every batch
    model, trainer = make_model(), make_trainer(plugins=[MixedPrecision("16-mixed", "cpu")])
    initial = weights(model)
    nanlab.watch(trainer, overflow_patience=2)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        trainer.fit(model, loader(*data))
    report = raised.value.report
    assert report.loss_scale is not None and report.op == "sqrt", str(report)
    assert same_weights(weights(model), initial)


def test_fp16_with_lightnings_grad_scaler_healthy_is_bit_identical():
    from lightning.pytorch.plugins.precision import MixedPrecision

    data = sensor_data()
    runs = []
    for watched in (False, True):
        model, log = make_model(), LossLog()
        trainer = make_trainer(callbacks=[log], plugins=[MixedPrecision("16-mixed", "cpu")], max_steps=3)
        watch = nanlab.watch(trainer) if watched else None
        trainer.fit(model, loader(*data))
        runs.append((weights(model), log.losses, watch))
    assert same_weights(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    watch = runs[1][2]
    assert watch.report is None and watch.step == 3 and watch.history.losses == pytest.approx(runs[1][1])  # unscaled
    assert len(watch.history.loss_scales) == 3


# -- DDP, as Lightning launches it --------------------------------------------------------------------------------
class RankReport(L.Callback):
    """Each rank writes what its watch saw when training ends (the ranks are forked processes)."""

    def __init__(self, watch, folder):
        self.watch, self.folder = watch, folder

    def on_train_end(self, trainer, pl_module):
        report = self.watch.report
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps({
            "stopped": self.watch.stopped, "step": report.step, "cause": report.cause, "ranks": report.ranks,
            "global_step": trainer.global_step,
            "weights": [p.detach().flatten().tolist() for p in pl_module.parameters()]}))


@pytest.mark.slow  # 0.2 s here, but it forks the test process (with the distributed tests, out of the quick tier)
@pytest.mark.skipif(sys.platform != "linux", reason="strategy='ddp_fork' forks the test process")
def test_under_ddp_every_rank_stops_at_the_same_step(tmp_path):
    data = sensor_data(stuck=[3 * BATCH + 2], n=BATCH * 8)  # one sample, on one rank's shard
    trainer = make_trainer(devices=2, strategy="ddp_fork")
    watch = nanlab.watch(trainer, on_nonfinite="stop")
    trainer.callbacks.append(RankReport(watch, tmp_path))
    trainer.fit(make_model(), loader(*data))
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0] == ranks[1], ranks  # the same step, report and weights on both ranks
    assert ranks[0]["stopped"] and (ranks[0]["step"], ranks[0]["cause"]) == (2, "sqrt-at-zero")
    assert len(ranks[0]["ranks"]) == 1 and ranks[0]["global_step"] == 3
    assert all(math.isfinite(value) for weights in ranks[0]["weights"] for value in weights)
