"""nanlab.watch on a torch.compile'd model, tested as a user trains one: ``model = torch.compile(model)``, then the
usual loop with ``nanlab.watch(model, optimizer, loss_fn)``.

Backend: the tests compile with ``backend="aot_eager"`` (dynamo's graph capture and AOTAutograd, as inductor gets
them, without generating C++): on this 2-core CPU inductor's first compile of a 3-layer MLP took 25 s (4 s with a
warm cache), too slow for every test; the one inductor test is marked slow. Graph breaks and recompiles are counted
with dynamo's own ``CompileCounterWithBackend`` and ``counters``.
"""
import contextlib
import logging
import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import nanlab  # noqa: E402


class Distance(nn.Module):
    """Euclidean distance written by hand: the derivative of the root is inf at 0, which a duplicated pair reaches."""

    def forward(self, a, b):
        return (a - b).pow(2).sum(-1, keepdim=True).sqrt()


class Siamese(nn.Module):
    """Scores a pair of 2-feature records (the 4 input columns) by the distance of their embeddings."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(2, 8)
        self.distance = Distance()
        self.head = nn.Linear(1, 3)

    def forward(self, x):
        return self.head(self.distance(self.embed(x[:, :2]), self.embed(x[:, 2:])))


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


def siamese():
    torch.manual_seed(0)
    return Siamese()


def duplicated_pair(data, step, sample=5):
    x = data[step][0]
    x[sample, 2:] = x[sample, :2]
    return data


def batches(n=5, scale_at=None, scale=1.0):
    generator = torch.Generator().manual_seed(0)
    out = []
    for step in range(n):
        x, y = torch.randn(8, 4, generator=generator), torch.randint(0, 3, (8,), generator=generator)
        if step == scale_at:
            x[2] *= scale
        out.append((x, y))
    return out


def train(model, data, backend="aot_eager", watched=True, **watch_options):
    """Compile, then train with SGD; returns (compiled model, watch, losses, compile counter)."""
    torch._dynamo.reset()
    counters.clear()
    counter = CompileCounterWithBackend(backend) if isinstance(backend, str) else backend
    compiled = torch.compile(model, backend=counter)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    watch = nanlab.watch(compiled, optimizer, F.cross_entropy, **watch_options) if watched else None
    with watch or contextlib.nullcontext():
        loss_fn = watch.loss_fn if watched else F.cross_entropy
        for x, y in data:
            optimizer.zero_grad()
            loss = loss_fn(compiled(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if watched and watch.stopped:
                break
    return compiled, watch, losses, counter


def test_the_watch_adds_no_graph_break_no_recompile_and_changes_nothing():
    plain_model, watched_model = mlp(), mlp()
    _, _, plain_losses, plain_counter = train(plain_model, batches(), watched=False)
    plain_breaks = dict(counters["graph_break"])
    _, watch, watched_losses, watched_counter = train(watched_model, batches())
    assert dict(counters["graph_break"]) == plain_breaks == {}
    assert (watched_counter.frame_count, watched_counter.op_count) == (plain_counter.frame_count,
                                                                       plain_counter.op_count) == (1, 3)
    assert counters["stats"]["unique_graphs"] == 1
    assert watch.step == 5 and watch.report is None
    assert plain_losses == watched_losses
    assert all(torch.equal(a, b) for a, b in zip(plain_model.parameters(), watched_model.parameters()))


def test_a_bad_step_is_localised_by_an_eager_replay_of_the_original_module():
    model = siamese()
    data = duplicated_pair(batches(), step=3)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        _, _, _, counter = train(model, data)
    report = raised.value.report
    assert (report.step, report.phase, report.module, report.op) == (3, "backward", "distance", "sqrt"), str(report)
    assert report.cause == "sqrt-at-zero"
    assert "compiler is suspected" not in (report.note or "")  # aot_eager and eager agree
    assert counters["stats"]["unique_graphs"] == 1, "the replay ran eagerly: nothing recompiled"
    assert all(torch.isfinite(p).all() for p in model.parameters())


def compiles_in_float16(graph, example_inputs):
    """A compiler with a precision bug: it keeps every result of the graph in float16 (as an over-eager
    low-precision pass might), so a value past 65504 becomes inf where eager float32 is fine."""

    def run(*args):
        return tuple(t.half().float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                     for t in graph(*args))

    return run


def test_the_compiler_is_suspected_when_the_compiled_step_is_non_finite_and_the_eager_replay_is_not():
    model = mlp()
    with pytest.raises(nanlab.NonFiniteError) as raised:
        train(model, batches(scale_at=2, scale=1e7), backend=compiles_in_float16)
    report = raised.value.report
    assert report.step == 2
    assert "compiler is suspected" in report.note, report.note
    assert "compiled: loss nan" in report.note and "eager: loss" in report.note and "gradients finite" in report.note
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_stop_and_skip_on_a_compiled_model_recompile_nothing(policy):
    model = siamese()
    data = duplicated_pair(batches(), step=1)
    _, watch, losses, counter = train(model, data, on_nonfinite=policy)
    assert watch.history.skipped_steps == [1]
    assert len(losses) == (2 if policy == "stop" else 5)
    assert counter.frame_count == 1 and counters["stats"]["unique_graphs"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_without_the_original_module_the_replay_runs_through_the_compiler_and_still_raises(monkeypatch, caplog):
    """The one private use for compiled models (OptimizedModule._orig_mod) taken away as a release might."""
    from nanlab.frameworks.torch import private

    monkeypatch.setattr(private, "ORIG_MOD_ATTRIBUTE", "_moved_in_a_later_release")
    monkeypatch.setattr(private, "_WARNED", set())
    model = siamese()
    data = duplicated_pair(batches(), step=1)
    with caplog.at_level(logging.WARNING, logger="nanlab.watch"), pytest.raises(nanlab.NonFiniteError) as raised:
        train(model, data)
    assert raised.value.report.step == 1
    assert "_orig_mod" in caplog.text


@pytest.mark.slow
def test_inductor_the_issues_root_at_zero_trains_finite_compiled_and_the_watch_says_nothing():
    """Measured for the issue: the eager gradient of sqrt(f(x) * 0) is NaN, inductor's is finite. Under inductor
    the step is finite, so the watch must not raise (no false alarm) and must change nothing."""

    class Tempered(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 3)

        def forward(self, x):
            logits = self.body(x)
            return logits + torch.sqrt(logits * 0)

    torch.manual_seed(0)
    eager = Tempered()
    F.cross_entropy(eager(batches(1)[0][0]), batches(1)[0][1]).backward()
    assert not all(torch.isfinite(p.grad).all() for p in eager.parameters())

    runs = []
    for watched in (False, True):
        torch.manual_seed(0)
        model = Tempered()
        _, watch, losses, counter = train(model, batches(3), backend="inductor", watched=watched)
        runs.append((losses, [p.detach().clone() for p in model.parameters()]))
        if watched:
            assert watch.report is None and watch.step == 3
    assert runs[0][0] == runs[1][0] and all(math.isfinite(loss) for loss in runs[0][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
