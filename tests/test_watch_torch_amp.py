"""nanlab.watch in mixed-precision torch loops the user wrote: a GradScaler the watch was not given (its skipped
steps never reach the optimizer), and bf16 autocast (no scaler) changing nothing."""
import contextlib
import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import nanlab  # noqa: E402


def model_and_optimizer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def batches(n, huge_from=None):
    generator = torch.Generator().manual_seed(0)
    for step in range(n):
        x, y = torch.randn(8, 4, generator=generator), torch.randint(0, 3, (8,), generator=generator)
        if huge_from is not None and step >= huge_from:
            x[1] = 1e6  # past float16's 65504 once the first layer multiplies it
        yield x, y


def fp16_loop(watch, model, optimizer, data):
    """The AMP recipe: autocast to float16, a GradScaler; the scaler is not handed to the watch."""
    scaler = torch.amp.GradScaler("cpu")
    updates = []
    for x, y in data:
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = watch.loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        updates.append(scaler.get_scale() >= scale)  # the scale backs off exactly when the step was skipped
    return updates


def test_a_scaler_the_watch_was_not_given_skipping_every_step_is_reported_as_fp16_overflow():
    """Today: from step 3 every loss is NaN, the scaler skips every update (so the optimizer's step pre-hook, where
    the watch checks, never fires) and 60 steps pass in silence. Now: the losses with no update after them count as
    skipped steps, and once skipping persists (overflow_patience, 10) the watch raises, naming fp16 overflow and
    asking for the scaler."""
    model, optimizer = model_and_optimizer()
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.cross_entropy) as watch:
            fp16_loop(watch, model, optimizer, batches(60, huge_from=3))
    report = raised.value.report
    assert report.step == 12 and watch.history.skipped_steps == list(range(3, 13))
    assert report.cause == "fp16-overflow", str(report)
    assert report.samples == [1]
    assert "scaler=scaler" in report.note and "No optimizer update followed" in report.note
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_scaler_not_given_that_skips_now_and_then_is_no_fault():
    model, optimizer = model_and_optimizer()
    data = list(batches(12))
    data[4][0][1] = 1e6  # one overflowing batch: the scaler skips that update, as it is meant to
    with nanlab.watch(model, optimizer, F.cross_entropy) as watch:
        updates = fp16_loop(watch, model, optimizer, data)
    assert updates.count(False) == 1
    assert watch.history.skipped_steps == [4] and watch.report is None


def test_a_healthy_fp16_loop_with_a_scaler_not_given_is_bit_identical():
    def run(watched):
        model, optimizer = model_and_optimizer()
        with nanlab.watch(model, optimizer, F.cross_entropy) if watched else contextlib.nullcontext() as watch:
            fp16_loop(watch or _Plain(), model, optimizer, batches(8))
        return [p.detach().clone() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(run(False), run(True)))


def test_a_healthy_bf16_autocast_loop_is_bit_identical_under_the_watch():
    def run(watched):
        model, optimizer = model_and_optimizer()
        losses = []
        with nanlab.watch(model, optimizer, F.cross_entropy) if watched else contextlib.nullcontext() as watch:
            for x, y in batches(8):
                optimizer.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = (watch.loss_fn if watched else F.cross_entropy)(model(x), y)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        if watched:
            assert watch.step == 8 and watch.report is None and watch.history.losses == losses
        return losses, [p.detach().clone() for p in model.parameters()]

    (plain_losses, plain), (watched_losses, watched) = run(False), run(True)
    assert plain_losses == watched_losses and all(math.isfinite(loss) for loss in plain_losses)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))


class _Plain:
    loss_fn = staticmethod(F.cross_entropy)
