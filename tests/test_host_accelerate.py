"""nanlab.watch with Accelerate, tested as a user writes an Accelerate loop: ``accelerator.prepare``d model,
optimizer and data loader, ``accelerator.accumulate``, ``accelerator.backward``, ``accelerator.clip_grad_norm_``;
the one change is ``nanlab.watch(model, optimizer, loss_fn)`` around the loop and ``watch.loss_fn`` for the loss."""
import contextlib
import math

import pytest

torch = pytest.importorskip("torch")
accelerate = pytest.importorskip("accelerate")
from accelerate import Accelerator  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import nanlab  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Accelerate keeps its state in process-wide singletons; each test is a fresh script."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def rows(n=64, nan_at=()):
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 4, generator=generator), torch.randn(n, 1, generator=generator)
    for row in nan_at:
        x[row, 2] = math.nan  # a corrupt record
    return torch.utils.data.TensorDataset(x, y)


def train(data, watched=True, accumulation=2, mixed_precision="no", on_nonfinite="raise", keep=None):
    """An Accelerate training loop; returns (model, watch, losses, accelerator); ``keep["model"]`` is the model
    even when training raises."""
    accelerator = Accelerator(gradient_accumulation_steps=accumulation, cpu=True, mixed_precision=mixed_precision)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if keep is not None:
        keep["model"] = model
    losses = []
    watch = nanlab.watch(model, optimizer, F.mse_loss, on_nonfinite=on_nonfinite) if watched else None
    with watch or contextlib.nullcontext():
        loss_fn = watch.loss_fn if watched else F.mse_loss
        for x, y in loader:
            with accelerator.accumulate(model):
                loss = loss_fn(model(x), y)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad()
                losses.append(loss.item())
            if watched and watch.stopped:
                break
    return model, watch, losses, accelerator


def finite(model):
    return all(torch.isfinite(p).all() for p in model.parameters())


def test_without_the_watch_a_nan_micro_batch_is_applied_and_accelerate_says_nothing_was_skipped():
    """The issue's finding: a NaN in a non-synchronising micro-batch (batch 2, the first of update 1) reaches the
    weights at the synchronising step, and accelerate's step_was_skipped stays False."""
    model, _, losses, accelerator = train(rows(nan_at=[17]), watched=False)
    assert math.isnan(losses[2])
    assert not accelerator.optimizer_step_was_skipped
    assert not finite(model)


def test_nan_in_a_non_synchronising_micro_batch_is_caught_at_the_synchronising_step():
    with pytest.raises(nanlab.NonFiniteError) as raised:
        train(rows(nan_at=[17]))  # sample 1 of batch 2: micro-batch 0 of update 1
    report = raised.value.report
    assert (report.step, report.micro_batch, report.samples, report.phase) == (1, 0, [1], "data"), str(report)
    assert "Micro-batch 0 of the 2" in report.note


def test_raise_and_stop_leave_the_weights_from_before_the_bad_update():
    plain, *_ = train(torch.utils.data.Subset(rows(), range(16)), watched=False)  # update 0 alone
    kept = {}
    with pytest.raises(nanlab.NonFiniteError):
        train(rows(nan_at=[17]), keep=kept)
    stopped, watch, losses, _ = train(rows(nan_at=[17]), on_nonfinite="stop")
    assert watch.stopped and watch.report.step == 1 and len(losses) == 4
    for model in (kept["model"], stopped):
        assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), model.parameters()))


def test_nan_in_the_synchronising_micro_batch_names_micro_batch_1():
    with pytest.raises(nanlab.NonFiniteError) as raised:
        train(rows(nan_at=[30]))  # sample 6 of batch 3: micro-batch 1 of update 1
    report = raised.value.report
    assert (report.step, report.micro_batch, report.samples) == (1, 1, [6])


def test_skip_drops_the_bad_update_and_trains_on():
    model, watch, losses, _ = train(rows(nan_at=[17]), on_nonfinite="skip")
    assert len(losses) == 8 and watch.history.skipped_steps == [1] and watch.step == 4
    assert finite(model)


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_healthy_run_is_bit_identical_under_the_watch(mixed_precision):
    plain, _, plain_losses, _ = train(rows(), watched=False, mixed_precision=mixed_precision)
    AcceleratorStateReset()
    watched, watch, watched_losses, _ = train(rows(), mixed_precision=mixed_precision)
    assert watch.step == 4 and watch.report is None
    assert plain_losses == watched_losses
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), watched.parameters()))


def AcceleratorStateReset():  # noqa: N802 - reads as the statement it stands for
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
