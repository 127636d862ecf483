"""The host API of the PyTorch watch (``check_at="host"``): what a trainer's adapter calls at its own events."""
import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import nanlab  # noqa: E402
from nanlab.frameworks.torch.watch import Watch  # noqa: E402
from nanlab.watching import WatchPolicy  # noqa: E402


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def data(seed=0, n=16):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=generator), torch.randint(0, 3, (n,), generator=generator)


def penalised(logits, y):
    return F.cross_entropy(logits, y) + (logits ** 2).mean() * 1e-30


def host_loop(watch, model, optimizer, batches, step_fn):
    """A host that calls the watch at its own events: record_step before each micro-batch, add_loss with the loss
    it computed outside the model, before_update after the backward passes."""
    losses = []
    for micro_batches in batches:
        optimizer.zero_grad()
        for args in micro_batches:
            watch.record_step(step_fn, args, {})
            loss = step_fn(*args)
            watch.add_loss(loss)
            loss.backward()
            losses.append(loss.item())
        watch.before_update()
        if watch.stopped:
            break
        optimizer.step()
    return losses


def make(seed=0):
    torch.manual_seed(seed)
    model = Net()
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def steps(n, accumulate=1, bad_at=None, bad_micro=0):
    out = []
    for step in range(n):
        micro = []
        for m in range(accumulate):
            x, y = data(step * 10 + m)
            if (step, m) == (bad_at, bad_micro):
                x = x.clone()
                x[3] = 1e25  # finite, but the logits' square overflows float32 in the training step's penalty
            micro.append((x, y))
        out.append(micro)
    return out


def test_host_check_raises_before_the_update_and_the_replay_reruns_the_recorded_step():
    model, optimizer = make()

    def training_step(x, y):
        hidden = model(x)
        return F.cross_entropy(hidden, y) + (hidden ** 2).mean() * 1e-30  # overflows for sample 3

    host_loop_steps = steps(4, bad_at=2)
    with Watch(model, optimizer, policy=WatchPolicy(), check_at="host") as watch:
        assert not optimizer._optimizer_step_pre_hooks, "check_at='host' registers no optimizer hook"
        before = None
        with pytest.raises(nanlab.NonFiniteError) as raised:
            for i, micro in enumerate(host_loop_steps):
                before = [p.detach().clone() for p in model.parameters()]
                host_loop(watch, model, optimizer, [micro], training_step)
    report = raised.value.report
    assert report.step == 2
    assert report.phase == "loss" and report.op == "pow", str(report)
    assert report.samples == [3]
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before)), "weights from before the bad step"


def test_host_check_names_the_micro_batch():
    model, optimizer = make()

    def training_step(x, y):
        return penalised(model(x), y)

    with pytest.raises(nanlab.NonFiniteError) as raised:
        with Watch(model, optimizer, policy=WatchPolicy(), check_at="host") as watch:
            host_loop(watch, model, optimizer, steps(3, accumulate=2, bad_at=1, bad_micro=1), training_step)
    report = raised.value.report
    assert (report.step, report.micro_batch, report.samples) == (1, 1, [3])


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_host_check_stop_and_skip_drop_the_update(policy):
    model, optimizer = make()

    def training_step(x, y):
        return penalised(model(x), y)

    with Watch(model, optimizer, policy=WatchPolicy(on_nonfinite=policy), check_at="host") as watch:
        losses = host_loop(watch, model, optimizer, steps(4, bad_at=1), training_step)
    assert watch.history.skipped_steps == [1]
    assert len(losses) == (2 if policy == "stop" else 4)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert watch.report.step == 1


def test_host_drop_update_is_the_hosts_own():
    model, optimizer = make()
    dropped = []

    def training_step(x, y):
        return penalised(model(x), y)

    with Watch(model, optimizer, policy=WatchPolicy(on_nonfinite="skip"), check_at="host") as watch:
        for micro in steps(3, bad_at=1):
            optimizer.zero_grad()
            for args in micro:
                watch.record_step(training_step, args, {})
                loss = training_step(*args)
                watch.add_loss(loss)
                loss.backward()
            watch.before_update(drop_update=lambda: dropped.append(watch.step))
            if dropped[-1:] != [watch.step - 1]:
                optimizer.step()
    assert dropped == [1]


def test_add_loss_counts_a_loss_outside_the_model():
    """A NaN loss with no gradient path (detached), seen only through add_loss."""
    model, optimizer = make()
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with Watch(model, optimizer, policy=WatchPolicy(), check_at="host") as watch:
            for step in range(3):
                x, y = data(step)
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                watch.add_loss(loss.detach() * (math.nan if step == 1 else 1.0))
                watch.before_update()
                optimizer.step()
    assert raised.value.report.step == 1


def test_forward_passes_are_recorded_without_record_step():
    """A host that records nothing itself: the model's forward passes are the micro-batches, as in a plain loop."""
    model, optimizer = make()
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with Watch(model, optimizer, F.cross_entropy, policy=WatchPolicy(), check_at="host") as watch:
            for step in range(3):
                x, y = data(step)
                if step == 2:
                    x[5] = math.inf
                optimizer.zero_grad()
                watch.loss_fn(model(x), y).backward()
                watch.before_update()
                optimizer.step()
    report = raised.value.report
    assert (report.step, report.phase, report.samples) == (2, "data", [5])


def test_healthy_host_run_is_bit_identical():
    def run(watched):
        model, optimizer = make()

        def training_step(x, y):
            return F.cross_entropy(model(x), y)

        batches = steps(5, accumulate=2)
        if not watched:
            return host_loop(_NoWatch(), model, optimizer, batches, training_step), model
        with Watch(model, optimizer, policy=WatchPolicy(), check_at="host") as watch:
            losses = host_loop(watch, model, optimizer, batches, training_step)
        assert watch.step == 5 and watch.report is None
        return losses, model

    (plain_losses, plain), (watched_losses, watched) = run(False), run(True)
    assert plain_losses == watched_losses
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), watched.parameters()))


def test_eager_module_of_a_compiled_model_is_the_original():
    model = Net()
    compiled = torch.compile(model, backend="eager")
    watch = Watch(compiled, policy=WatchPolicy(), check_at="host")
    assert watch.eager_module is model
    assert Watch(model, policy=WatchPolicy()).eager_module is model


def test_check_at_is_validated():
    with pytest.raises(nanlab.NanlabError, match="check_at"):
        Watch(Net(), policy=WatchPolicy(), check_at="loss")


class _NoWatch:
    stopped = False

    def record_step(self, *args):
        pass

    def add_loss(self, loss):
        pass

    def before_update(self):
        pass
