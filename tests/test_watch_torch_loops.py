"""nanlab.watch for PyTorch in real training loops: the lazy replay, mixed precision, gradient accumulation, extra
arguments, a loss computed inside forward, labels, what to do on a NaN, and one surface with the Keras watch."""
import json
import logging
import math
import sys

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import nanlab  # noqa: E402
from nanlab.watching import WatchHistory, WatchPolicy  # noqa: E402

BATCH = 16
FLOAT16_MAX = 65504.0


def classifier(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def data(seed=0, batch=BATCH):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, generator=generator), torch.randint(0, 3, (batch,), generator=generator)


# -- two layers: the replay loads lazily, and its private APIs can break only the localisation --------------------
def test_plain_training_survives_when_the_replays_private_imports_fail(monkeypatch):
    # A torch release that moves a private API makes importing the replay fail (torch itself needs _pytree, so the
    # replay module is the one made unimportable here); the watch module is imported afresh.
    import nanlab.frameworks.torch as torch_framework

    monkeypatch.delitem(sys.modules, "nanlab.frameworks.torch.watch", raising=False)
    monkeypatch.setitem(sys.modules, "nanlab.frameworks.torch.replay", None)
    monkeypatch.delattr(torch_framework, "replay", raising=False)  # as if it had never imported in this process
    model, (x, y) = classifier(), data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with nanlab.watch(model, optimizer, F.cross_entropy) as watch:  # attaching imports no private API
        for _ in range(3):
            optimizer.zero_grad()
            watch.loss_fn(model(x), y).backward()
            optimizer.step()
    assert watch.step == 3 and all(math.isfinite(loss) for loss in watch.history.losses)
    x_bad = x.clone()
    x_bad[4, 0] = math.nan
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.cross_entropy) as watch:
            optimizer.zero_grad()
            watch.loss_fn(model(x_bad), y).backward()
            optimizer.step()
    report = raised.value.report
    assert (report.step, report.phase) == (0, "loss")
    assert "Localisation was unavailable" in str(report) and "nanlab.frameworks.torch.replay" in report.note


def test_the_replay_is_not_imported_while_training_is_healthy(monkeypatch):
    monkeypatch.delitem(sys.modules, "nanlab.frameworks.torch.replay", raising=False)
    model, (x, y) = classifier(), data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with nanlab.watch(model, optimizer, F.cross_entropy) as watch:
        for _ in range(3):
            optimizer.zero_grad()
            watch.loss_fn(model(x), y).backward()
            optimizer.step()
    assert "nanlab.frameworks.torch.replay" not in sys.modules


def train_then_nan(model, optimizer, loss_fn=F.cross_entropy, **options):
    """Three healthy steps under a watch, then one whose batch holds a NaN (inside ``pytest.raises``)."""
    (x, y) = data()
    with nanlab.watch(model, optimizer, loss_fn, **options) as watch:
        for _ in range(3):
            optimizer.zero_grad()
            watch.loss_fn(model(x), y).backward()
            optimizer.step()
    assert watch.step == 3 and len(watch.history.losses) == 3 and all(map(math.isfinite, watch.history.losses))
    x_bad = x.clone()
    x_bad[4, 0] = math.nan
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, loss_fn, **options) as watch:
            optimizer.zero_grad()
            watch.loss_fn(model(x_bad), y).backward()
            optimizer.step()
    return raised.value.report


# Each private torch API nanlab uses lives in nanlab.frameworks.torch.private; each is taken away here as a torch
# release might, and the watch must say which moved, keep training, and still stop on a NaN.
def test_without_torch_function_mode_the_watch_trains_and_stops_unlocated(monkeypatch):
    import torch._dynamo  # noqa: F401 - torch's own lazy imports need TorchFunctionMode: load them first

    from nanlab.frameworks.torch import private

    model = classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monkeypatch.delattr(torch.overrides, "TorchFunctionMode")
    with pytest.raises(private.PrivateAPIMoved, match="torch.overrides.TorchFunctionMode"):
        private.torch_function_mode()
    report = train_then_nan(model, optimizer)
    assert (report.step, report.phase, report.module, report.op) == (0, "loss", None, None)
    assert "Localisation was unavailable (PrivateAPIMoved: torch.overrides.TorchFunctionMode" in report.note


def test_a_loss_scaler_whose_methods_moved_is_not_hooked_and_a_nan_still_raises(monkeypatch, caplog):
    import functools

    from nanlab.frameworks.torch import private

    # GradScaler.update turned into a property (as a torch release might): an instance attribute no longer shadows
    # it, so the watch would never see a step. It notices, says so, and stands in with its loss checks.
    update = torch.amp.GradScaler.update
    monkeypatch.setattr(torch.amp.GradScaler, "update", property(lambda self: functools.partial(update, self)))
    model, (x, y) = classifier(), data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    message = private.scaler_hooks_missing(scaler)
    assert "GradScaler.update" in message and "GradScaler.step" not in message
    with caplog.at_level(logging.WARNING, logger="nanlab.watch"):
        with nanlab.watch(model, optimizer, F.cross_entropy, scaler=scaler) as watch:
            amp_loop(model, optimizer, scaler, [(x, y)] * 3, watch.loss_fn)
            assert "step" not in vars(scaler) and "update" not in vars(scaler)
    assert any("GradScaler.update" in record.getMessage() for record in caplog.records)
    assert watch.step == 3 and len(watch.history.losses) == 3 and all(map(math.isfinite, watch.history.losses))
    x_bad = x.clone()
    x_bad[4, 0] = math.nan
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.cross_entropy, scaler=scaler) as watch:
            amp_loop(model, optimizer, scaler, [(x_bad, y)], watch.loss_fn)
    report = raised.value.report
    assert (report.step, report.phase, report.samples) == (0, "data", [4])
    assert "loss scaler's steps were not hooked" in report.note and "GradScaler.update" in report.note


def test_without_found_inf_an_unannounced_scaler_goes_unnoticed_but_a_nan_still_raises(monkeypatch, caplog):
    from nanlab.frameworks.torch import private

    original = torch.amp.GradScaler.step

    def step(self, optimizer, *args, **kwargs):  # a GradScaler.step that no longer names optimizer.found_inf
        return original(self, optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.amp.GradScaler, "step", step)
    monkeypatch.setattr(private, "_WARNED", set())
    assert not private.found_inf_available()
    model = classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.WARNING, logger="nanlab.watch"):
        report = train_then_nan(model, optimizer)
    assert [record.getMessage().count("optimizer.found_inf") for record in caplog.records] == [1]  # said once
    assert (report.step, report.phase, report.samples) == (0, "data", [4])  # localised as ever


# -- one surface ---------------------------------------------------------------------------------------------------
def test_the_watch_surface_and_a_json_report():
    model, (x, y) = classifier(), data()
    x[7] = math.inf
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = nanlab.watch(model, optimizer, F.cross_entropy)
    assert (watch.step, watch.report, watch.stopped) == (0, None, False)
    assert isinstance(watch.history, WatchHistory) and isinstance(watch.policy, WatchPolicy)
    assert not hasattr(watch, "_output")
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with watch:
            optimizer.zero_grad()
            watch.loss_fn(model(x), y).backward()
            optimizer.step()
    assert watch.report is raised.value.report
    record = json.loads(json.dumps(watch.report.to_dict(), allow_nan=False))
    assert (record["phase"], record["samples"], record["optimizer"]["kind"]) == ("data", [7], "SGD")


@pytest.mark.parametrize("policy", ["raise", "stop", "skip"])
def test_the_watch_lets_go_of_the_model_and_optimizer_once_the_loop_returns(policy, refcounting_only):
    """Trained in a function with ``with nanlab.watch(...)``: once it returns, reference counting alone frees the
    model, the optimizer and the watch, a NonFiniteError caught inside included. A cycle through the watch would keep a
    DDP model and its process group alive until the garbage collector runs (see test_host_ddp_transformers.py)."""
    import weakref

    def train():
        model = classifier()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        try:
            with nanlab.watch(model, optimizer, F.cross_entropy, on_nonfinite=policy) as watch:
                for step in range(4):
                    x, y = data(step)
                    if step == 2:
                        x[1, 0] = float("inf")
                    optimizer.zero_grad()
                    watch.loss_fn(model(x), y).backward()
                    optimizer.step()
        except nanlab.NonFiniteError:
            pass
        assert watch.report is not None and watch.report.step == 2
        return weakref.ref(model), weakref.ref(optimizer), weakref.ref(watch)

    train()  # a process's first optimizer may cache an import-time traceback that holds the calling frame
    held = train()
    assert [ref() is None for ref in held] == [True, True, True], [type(ref()).__name__ for ref in held]


def test_unknown_options_and_policies_are_one_line_errors():
    model = classifier()
    with pytest.raises(nanlab.NanlabError, match="unknown nanlab.watch option 'on_nan'"):
        nanlab.watch(model, on_nan="raise")
    with pytest.raises(nanlab.NanlabError, match="unknown on_nonfinite 'ignore'"):
        nanlab.watch(model, on_nonfinite="ignore")
    with pytest.raises(nanlab.NanlabError, match="torch.amp.GradScaler"):
        nanlab.watch(model, scaler=object())


# -- mixed precision -----------------------------------------------------------------------------------------------
class Wide(nn.Module):
    """A first layer whose activations pass float16's 65504 (inputs in raw units, ~1e3 times too large)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 16)
        self.head = nn.Linear(16, 3)
        with torch.no_grad():
            self.body.weight.mul_(200.0)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def amp_loop(model, optimizer, scaler, batches, loss_fn, unscale=False, on_grads=None):
    for x, y in batches:
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        if on_grads is not None:
            on_grads(scaler)
        if unscale:
            scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()


def raw_batches(steps, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(300.0 * torch.randn(BATCH, 4, generator=generator), torch.randint(0, 3, (BATCH,), generator=generator))
            for _ in range(steps)]


def test_persistent_fp16_overflow_that_the_watch_once_missed_now_raises_with_the_evidence():
    torch.manual_seed(0)
    model = Wide()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=32768.0)
    amp_loop(model, optimizer, scaler, raw_batches(60), F.cross_entropy)
    assert scaler.get_scale() < 1e-12  # the measured issue: every step skipped, the scale collapsed from 32768

    torch.manual_seed(0)
    model = Wide()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=32768.0)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.cross_entropy, scaler=scaler) as watch:
            amp_loop(model, optimizer, scaler, raw_batches(60), watch.loss_fn)
    report = raised.value.report
    patience = WatchPolicy().overflow_patience
    assert report.step == patience - 1 and report.skipped_in_a_row == patience
    assert watch.history.skipped_steps == list(range(patience)) and not watch.history.losses
    assert (report.module, report.op, report.module_kind, report.dtype) == ("body", "linear", "Linear", "float16")
    assert report.dtype_max == FLOAT16_MAX and report.max_abs > FLOAT16_MAX and math.isfinite(report.max_abs)
    assert report.loss_scale == 32768.0 / 2 ** (patience - 1)
    assert watch.history.loss_scales == [32768.0 / 2 ** (step + 1) for step in range(patience)]
    assert "fp16 overflow" in str(report) and "65504" in str(report)


def test_persistent_overflow_also_raises_when_the_loss_scale_collapses():
    torch.manual_seed(0)
    model = Wide()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.cross_entropy, scaler=scaler, overflow_patience=50) as watch:
            amp_loop(model, optimizer, scaler, raw_batches(60), watch.loss_fn)
    assert raised.value.report.step == 3 and watch.history.loss_scales[-1] == 0.5  # 8 -> 4 -> 2 -> 1 -> 0.5 < 1


def test_the_replay_runs_under_the_autocast_state_of_the_step():
    # In float32 this layer is finite: only a replay under float16 autocast reproduces the overflow.
    torch.manual_seed(0)
    model = Wide()
    x, y = raw_batches(1)[0]
    assert torch.isfinite(model(x)).all()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.cross_entropy) as watch:
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = watch.loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
    report = raised.value.report
    assert (report.phase, report.module, report.op, report.dtype) == ("forward", "body", "linear", "float16")


def test_bfloat16_autocast_is_replayed_in_bfloat16():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    with torch.no_grad():
        model[0].weight.fill_(1e38)  # finite in bfloat16 (float32's range), the product overflows
    x, y = torch.ones(BATCH, 4), torch.zeros(BATCH, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.mse_loss) as watch:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = watch.loss_fn(model(x).float(), y)
            loss.backward()
            optimizer.step()
    report = raised.value.report
    assert (report.module, report.op, report.dtype, report.value) == ("0", "linear", "bfloat16", "inf")
    assert report.max_abs > report.dtype_max


@pytest.mark.parametrize("fused", [False, True], ids=["plain-adam", "fused-adam"])
@pytest.mark.parametrize("unscale", [False, True], ids=["scaler-unscales", "loop-unscales"])
def test_an_isolated_overflow_is_a_skipped_step_and_the_history_is_unscaled(fused, unscale):
    model, batches = classifier(), [data(seed) for seed in range(8)]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 14)
    expected = []

    def unscaled_norm(scaler):
        grads = [p.grad for p in model.parameters()]
        norm = torch.stack([g.double().norm() for g in grads]).norm().item() / scaler.get_scale()
        expected.append(norm)

    batches[3][0][2] = math.inf  # one bad record: the scaler skips that step, as it should
    with nanlab.watch(model, optimizer, F.cross_entropy, scaler=scaler) as watch:
        amp_loop(model, optimizer, scaler, batches, watch.loss_fn, unscale=unscale, on_grads=unscaled_norm)
    assert watch.step == 8 and watch.history.skipped_steps == [3] and watch.report is None
    assert len(watch.history.grad_norms) == len(watch.history.losses) == 7
    healthy = [norm for step, norm in enumerate(expected) if step != 3]
    assert watch.history.grad_norms == pytest.approx(healthy, rel=1e-5)
    assert watch.history.loss_scales[3] == watch.history.loss_scales[2] / 2
    assert "step" not in vars(scaler) and "update" not in vars(scaler)  # the scaler is left as it was


def test_a_fused_optimizer_stepped_by_an_unannounced_scaler_is_a_clear_error():
    model, (x, y) = classifier(), data()
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(nanlab.NanlabError, match="scaler=scaler"):
        with nanlab.watch(model, optimizer, F.cross_entropy) as watch:
            amp_loop(model, optimizer, scaler, [(x, y)], watch.loss_fn)


def test_the_nanlab_loop_goes_on_past_a_step_the_watch_skipped():
    from nanlab.frameworks.torch.loop import train

    cause = nanlab.get_cause("high-learning-rate")
    training = cause.recipe("torch").SETTINGS["broken"](seed=0, device="cpu")
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training, on_nonfinite="skip", max_skips=2) as watch:
            train(training, 400)
    skipped, step = watch.history.skipped_steps, raised.value.report.step
    assert skipped[-2:] == [step - 2, step - 1] and len(watch.history.losses) + len(skipped) == step
    assert training.watch is None  # the watch detached from the Training


# -- gradient accumulation, extra arguments ------------------------------------------------------------------------
def test_accumulation_replays_every_micro_batch_and_names_the_one_that_carries_the_nan():
    model = classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    micro_batches = [data(seed, batch=8) for seed in range(4)]
    micro_batches[0][0][6] = math.nan  # the first of four: the old watch replayed only the last one
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.cross_entropy) as watch:
            optimizer.zero_grad()
            for x, y in micro_batches:
                (watch.loss_fn(model(x), y) / len(micro_batches)).backward()
            optimizer.step()
    report = raised.value.report
    assert (report.phase, report.micro_batch, report.samples) == ("data", 0, [6])


def test_accumulation_localises_an_op_in_a_middle_micro_batch():
    model = nn.Sequential(nn.Linear(4, 3), LogSoftmaxByHand())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    micro_batches = [data(seed, batch=8) for seed in range(3)]
    micro_batches[1][0][2] *= 1e5  # saturates the softmax: a probability underflows to 0
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.nll_loss) as watch:
            optimizer.zero_grad()
            for x, y in micro_batches:
                watch.loss_fn(model(x), y).backward()
            optimizer.step()
    report = raised.value.report
    assert (report.micro_batch, report.phase, report.module, report.op, report.samples) == (1, "forward", "1", "log",
                                                                                            [2])
    assert report.cause == "log-of-zero"


class LogSoftmaxByHand(nn.Module):
    def forward(self, logits):
        return torch.log(torch.softmax(logits, dim=-1))


class Masked(nn.Module):
    """A model with a keyword argument: features are divided by the per-sample count of valid positions."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, x, *, mask):
        return self.proj(x) / mask.sum(dim=-1, keepdim=True)


def test_extra_arguments_of_the_model_and_of_the_loss_are_replayed():
    model = Masked()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data()
    mask = torch.ones(BATCH, 5)
    mask[10] = 0.0  # an empty record: 0 valid positions
    weights = torch.tensor([1.0, 2.0, 0.5])
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.cross_entropy) as watch:
            optimizer.zero_grad()
            watch.loss_fn(model(x, mask=mask), y, weight=weights, label_smoothing=0.1).backward()
            optimizer.step()
    report = raised.value.report
    assert (report.phase, report.module, report.op, report.samples) == ("forward", "Masked", "div", [10])
    assert report.cause == "division-by-zero"


# -- a loss computed inside forward (Hugging Face style) -----------------------------------------------------------
class WithLoss(nn.Module):
    """Returns its loss the way Hugging Face models do: as ``kind`` says (dict, object, tuple or bare tensor)."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.embed, self.head = nn.Embedding(10, 8), nn.Linear(8, 10)

    def forward(self, input_ids, labels=None):
        logits = self.head(torch.log(self.embed(input_ids).abs()))  # log(0) for an all-zero embedding row
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        if self.kind == "dict":
            return {"loss": loss, "logits": logits}
        if self.kind == "object":
            return type("Output", (), {"loss": loss, "logits": logits})()
        return (loss, logits) if self.kind == "tuple" else loss


@pytest.mark.parametrize("kind", ["dict", "object", "tuple", "tensor"])
def test_a_loss_computed_inside_forward_needs_no_loss_fn(kind):
    torch.manual_seed(0)
    model = WithLoss(kind)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    input_ids = torch.randint(1, 10, (BATCH, 6))
    labels = torch.randint(0, 10, (BATCH, 6))
    with nanlab.watch(model, optimizer) as watch:
        for _ in range(2):
            optimizer.zero_grad()
            output = model(input_ids=input_ids, labels=labels)
            loss = output if kind == "tensor" else output[0] if kind == "tuple" else \
                output["loss"] if kind == "dict" else output.loss
            loss.backward()
            optimizer.step()
    assert watch.history.losses == pytest.approx([watch.history.losses[0], watch.history.losses[1]])
    assert len(watch.history.losses) == 2 and all(math.isfinite(v) for v in watch.history.losses)
    with torch.no_grad():
        model.embed.weight[0] = 0.0
    input_ids[[4, 9], 2] = 0  # id 0 appears nowhere else
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer) as watch:
            optimizer.zero_grad()
            output = model(input_ids=input_ids, labels=labels)
            (output if kind == "tensor" else output[0] if kind == "tuple" else
             output["loss"] if kind == "dict" else output.loss).backward()
            optimizer.step()
    report = raised.value.report
    assert (report.phase, report.module, report.op, report.samples) == ("forward", "WithLoss", "log", [4, 9])


# -- labels --------------------------------------------------------------------------------------------------------
def test_out_of_range_labels_are_reported_before_the_loss_can_index_with_them():
    model, (x, y) = classifier(), data()
    y[[3, 12]] = torch.tensor([7, -1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(nanlab.NonFiniteError) as raised:  # without the watch: IndexError (CPU), assert (CUDA)
        with nanlab.watch(model, optimizer, F.cross_entropy) as watch:
            optimizer.zero_grad()
            watch.loss_fn(model(x), y).backward()
            optimizer.step()
    report = raised.value.report
    assert (report.phase, report.samples) == ("data", [3, 12])
    assert "label" in report.label_problem and "7" in report.label_problem
    assert report.cause == "huge-labels"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the update did not happen


def test_ignore_index_padding_is_not_a_label_problem():
    model, (x, y) = classifier(), data()
    y[[1, 5]] = -100
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = F.cross_entropy(model(x), y).item()  # the padded samples count for nothing
    with nanlab.watch(model, optimizer, F.cross_entropy) as watch:
        optimizer.zero_grad()
        watch.loss_fn(model(x), y).backward()
        optimizer.step()
    assert watch.step == 1 and watch.history.losses == [expected] and watch.report is None


# -- what to do on a NaN -------------------------------------------------------------------------------------------
def nan_on(steps_with_nan, count=6, seed=0):
    batches = [data(seed + step) for step in range(count)]
    for step in steps_with_nan:
        batches[step][0][0, 0] = math.nan
    return batches


def test_stop_ends_training_cleanly_with_the_report():
    model = classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    done = []
    with nanlab.watch(model, optimizer, F.cross_entropy, on_nonfinite="stop") as watch:
        for x, y in nan_on([2]):
            optimizer.zero_grad()
            watch.loss_fn(model(x), y).backward()
            optimizer.step()
            if watch.stopped:
                break
            done.append(watch.step)
    assert watch.stopped and done == [1, 2] and watch.report.step == 2 and watch.report.phase == "data"
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad update was dropped


def test_skip_drops_the_bad_update_logs_it_and_gives_up_after_max_skips(caplog):
    model = classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.WARNING, logger="nanlab.watch"):
        with nanlab.watch(model, optimizer, F.cross_entropy, on_nonfinite="skip") as watch:
            for x, y in nan_on([1, 4]):
                optimizer.zero_grad()
                watch.loss_fn(model(x), y).backward()
                optimizer.step()
    assert watch.step == 6 and watch.history.skipped_steps == [1, 4] and len(watch.history.losses) == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [record.getMessage().split(":")[0] for record in caplog.records] == [
        "nanlab.watch skipped step 1", "nanlab.watch skipped step 4"]

    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.cross_entropy, on_nonfinite="skip", max_skips=2) as watch:
            for x, y in nan_on([1, 2, 3, 4]):
                optimizer.zero_grad()
                watch.loss_fn(model(x), y).backward()
                optimizer.step()
    assert raised.value.report.step == 3 and "Gave up after 2 skipped steps in a row" in str(raised.value.report)
