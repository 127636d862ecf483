"""nanlab.watch for PyTorch: it names every catalogue cause, localises models outside the catalogue, costs nothing
per layer while training is healthy, and does not change training."""
import ast
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import nanlab  # noqa: E402
from nanlab.frameworks.torch import loop as torch_loop  # noqa: E402
from nanlab.seeding import seed_everything  # noqa: E402

BATCH = 16


def run_own_loop(model, x, y, loss_fn, lr=0.1, steps=3, optimizer=None):
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=lr)
    with nanlab.watch(model, optimizer, loss_fn) as watch:
        for _ in range(steps):
            optimizer.zero_grad()
            loss = watch.loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
    return watch


class LogHead(nn.Module):
    """softmax then log: the textbook way to get log(0) once a logit runs away."""

    def forward(self, logits):
        return torch.log(torch.softmax(logits, dim=-1))


def test_localises_log_of_zero_in_the_head_and_the_samples_that_carry_it():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("body", nn.Linear(4, 3))
    model.add_module("head", LogHead())
    x = torch.randn(BATCH, 4)
    x[5] *= 1e4  # one sample saturates the softmax: a probability underflows to exactly 0
    y = torch.zeros(BATCH, dtype=torch.long)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        run_own_loop(model, x, y, F.nll_loss)
    report = raised.value.report
    assert (report.step, report.phase, report.module, report.op) == (0, "forward", "head", "log")
    assert report.samples == [5]
    assert report.parameter == "body.bias"
    assert report.cause == "log-of-zero"
    assert "head" in str(report) and "log" in str(report)


class MaskedAttention(nn.Module):
    """Single-head self-attention whose mask can hide every key from a query: softmax over all -inf is NaN."""

    def __init__(self, dim):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x, mask):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = (q @ k.transpose(-2, -1)).masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v


class AttentionModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = MaskedAttention(8)
        self.out = nn.Linear(8, 2)

    def forward(self, x, mask):
        return self.out(self.attn(x, mask).mean(dim=1))


def test_localises_a_fully_masked_attention_row():
    torch.manual_seed(0)
    model = AttentionModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(BATCH, 5, 8)
    mask = torch.ones(BATCH, 5, 5, dtype=torch.bool)
    mask[9, 2] = False  # sample 9, query 2 may attend to nothing
    y = torch.randint(0, 2, (BATCH,))
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.cross_entropy) as watch:
            optimizer.zero_grad()
            watch.loss_fn(model(x, mask), y).backward()
            optimizer.step()
    report = raised.value.report
    assert (report.phase, report.module, report.op) == ("forward", "attn", "softmax")
    assert report.samples == [9]
    assert report.cause == "masked-attention"  # a catalogue cause since number 13


class ExpActivation(nn.Module):
    def forward(self, x):
        return torch.exp(x) - 1


def test_localises_exp_overflow_in_a_custom_activation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), ExpActivation(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].weight.mul_(40.0)  # pre-activations of order 100: exp(100) overflows float32
    x, y = torch.randn(BATCH, 4), torch.randint(0, 2, (BATCH,))
    with pytest.raises(nanlab.NonFiniteError) as raised:
        run_own_loop(model, x, y, F.cross_entropy)
    report = raised.value.report
    assert (report.phase, report.module, report.op, report.value) == ("forward", "1", "exp", "inf")
    assert report.parameter == "2.bias"


class SafeNorm(nn.Module):
    """sqrt of a sum of squares: finite forward at 0, but d sqrt(u)/du = 1/(2 sqrt(u)) is infinite there."""

    def forward(self, x):
        return torch.sqrt((x ** 2).sum(dim=-1, keepdim=True))


def test_localises_a_backward_only_overflow():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), SafeNorm())
    x = torch.randn(BATCH, 4)
    x[3] = 0.0
    with torch.no_grad():
        model[0].bias.zero_()
    y = torch.ones(BATCH, 1)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        run_own_loop(model, x, y, F.mse_loss)
    report = raised.value.report
    assert (report.phase, report.module, report.op) == ("backward", "1", "sqrt")
    assert report.parameter == "0.bias"
    assert report.samples == [3]


def test_reports_an_update_that_overflows_finite_gradients():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    x, y = torch.randn(BATCH, 4), 1e3 * torch.randn(BATCH, 1)  # gradients of order 1e3: finite
    with pytest.raises(nanlab.NonFiniteError) as raised:
        run_own_loop(model, x, y, F.mse_loss, lr=1e37)  # the step lr * grad ~ 1e40 overflows float32
    report = raised.value.report
    assert (report.step, report.phase) == (0, "optimizer update")
    assert report.parameter in ("weight", "bias")
    assert report.losses and math.isfinite(report.losses[0])


def test_non_finite_inputs_are_a_data_problem_with_their_samples():
    model = nn.Linear(4, 2)
    x, y = torch.randn(BATCH, 4), torch.randint(0, 2, (BATCH,))
    x[2, 1], x[11, 0] = float("nan"), float("inf")
    with pytest.raises(nanlab.NonFiniteError) as raised:
        run_own_loop(model, x, y, F.cross_entropy)
    report = raised.value.report
    assert (report.phase, report.samples) == ("data", [2, 11])


def test_healthy_training_adds_no_per_layer_hooks_and_leaves_none_behind():
    cause = nanlab.get_cause("high-learning-rate")
    seed_everything(0, "torch")
    training = cause.recipe("torch").SETTINGS["lower-lr"](seed=0, device="cpu")
    loss_fn = training.loss_fn
    seen = []
    with nanlab.watch(training) as watch:
        training.batches = iter([next(training.batches) for _ in range(3)])
        original = training.model[0].forward
        training.model[0].forward = lambda x: (seen.append(dict(training.model[0]._forward_hooks)), original(x))[1]
        torch_loop.train(training, 3)
    assert seen == [{}, {}, {}]
    assert watch.step == 3 and len(watch.history.grad_norms) == 3
    assert training.loss_fn is loss_fn and not training.model._forward_pre_hooks


@pytest.mark.parametrize("setting", ["broken", "lower-lr"])
def test_training_is_bit_identical_with_and_without_the_watch(setting):
    cause = nanlab.get_cause("high-learning-rate")
    recipe = cause.recipe("torch")
    seed_everything(0, "torch")
    plain = torch_loop.train(recipe.SETTINGS[setting](seed=0, device="cpu"), 20)
    seed_everything(0, "torch")
    training = recipe.SETTINGS[setting](seed=0, device="cpu")
    watch = nanlab.watch(training)
    if plain.first_nonfinite_step is None:
        with watch:
            watched = torch_loop.train(training, 20)
        assert watched.losses == plain.losses and watched.grad_norms == plain.grad_norms
        assert watch.history.losses == plain.losses
    else:
        with pytest.raises(nanlab.NonFiniteError):
            with watch:
                torch_loop.train(training, 20)
        assert watch.history.losses == plain.losses[:plain.first_nonfinite_step]


def test_watch_rejects_what_it_cannot_watch():
    with pytest.raises(nanlab.NanlabError, match="torch.nn.Module"):
        nanlab.watch(object())


def test_names_huge_labels_on_its_regression_cousin():
    cause = nanlab.get_cause("huge-labels")
    seed_everything(0, "torch")
    training = cause.recipe("torch").REGRESSION_SETTINGS["broken"](seed=0, device="cpu")
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training):
            torch_loop.train(training, 100)
    report = raised.value.report
    assert (report.phase, report.module, report.huge_targets) == ("loss", "loss", True)
    assert report.cause == "huge-labels"


# -- the evidence in the shared vocabulary -------------------------------------------------------------------------
def test_localised_reports_carry_the_op_family_and_input_statistics():
    from nanlab.watching.vocabulary import InputStats, OpFamily

    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("body", nn.Linear(4, 3))
    model.add_module("head", LogHead())
    x = torch.randn(BATCH, 4)
    x[5] *= 1e4
    with pytest.raises(nanlab.NonFiniteError) as raised:
        run_own_loop(model, x, torch.zeros(BATCH, dtype=torch.long), F.nll_loss)
    report = raised.value.report
    assert (report.op, report.op_family) == ("log", OpFamily.LOG)
    (probabilities,) = report.op_inputs
    assert isinstance(probabilities, InputStats) and probabilities.dtype == "float32"
    assert probabilities.size == BATCH * 3 and probabilities.zeros >= 1 and probabilities.nonfinite == 0
    assert probabilities.min_abs == 0.0 and probabilities.min == 0.0 and 0.0 < probabilities.max <= 1.0
    assert report.to_dict()["op_family"] == "log"


def test_a_backward_culprit_carries_the_statistics_of_its_forward_inputs():
    from nanlab.watching.vocabulary import OpFamily

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), SafeNorm())
    x = torch.randn(BATCH, 4)
    x[3] = 0.0
    with torch.no_grad():
        model[0].bias.zero_()
    with pytest.raises(nanlab.NonFiniteError) as raised:
        run_own_loop(model, x, torch.ones(BATCH, 1), F.mse_loss)
    report = raised.value.report
    assert (report.phase, report.op, report.op_family) == ("backward", "sqrt", OpFamily.SQRT)
    (squares,) = report.op_inputs  # the input of sqrt in the forward pass: sample 3's sum of squares is 0
    assert squares.dtype == "float32" and squares.size == BATCH and squares.zeros == 1 and squares.negatives == 0
    assert report.cause == "sqrt-at-zero"


def test_an_update_report_names_the_optimizer_in_the_vocabulary():
    from nanlab.watching.vocabulary import OptimizerFacts

    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    x, y = torch.randn(BATCH, 4), 1e3 * torch.randn(BATCH, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e37, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.01)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        run_own_loop(model, x, y, F.mse_loss, optimizer=optimizer)
    report = raised.value.report
    assert (report.phase, report.dtype, report.dtype_max) == ("optimizer update", "float32", 3.4028234663852886e38)
    assert report.optimizer == OptimizerFacts(kind="Adam", learning_rate=1e37, weight_decay=0.01, eps=1e-6,
                                              betas=(0.8, 0.9), param_dtype="float32", decoupled_weight_decay=False)
    assert report.cause != "optimizer-hyperparameters"  # Adam's decay goes through the gradient: lr * wd is no factor


class Float8Gain(nn.Module):
    """Activations quantised to float8 (e4m3fn) and scaled by a float8 parameter, then a log: torch 2.13 has no
    isfinite, max, < or vector_norm for float8 on the CPU, so each of the watch's checks must upcast first."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 4, bias=False)
        self.gain = nn.Parameter(torch.full((BATCH, 4), 2.0, dtype=torch.float8_e4m3fn))
        with torch.no_grad():
            self.body.weight.copy_(torch.eye(4))

    def forward(self, x):
        return torch.log((self.body(x).to(torch.float8_e4m3fn) * self.gain).float())


def test_float8_tensors_and_parameters_never_crash_the_watch():
    from nanlab.watching.vocabulary import OpFamily

    torch.manual_seed(0)
    model = Float8Gain()
    optimizer = torch.optim.SGD(model.body.parameters(), lr=0.01)  # torch has no float8 add_ on the CPU: gain stays
    x, y = torch.rand(BATCH, 4) + 0.5, torch.zeros(BATCH, 4)
    with nanlab.watch(model, optimizer, F.mse_loss) as watch:
        for _ in range(3):
            model.zero_grad()
            watch.loss_fn(model(x), y).backward()
            optimizer.step()
    assert watch.step == 3 and all(math.isfinite(norm) and norm > 0 for norm in watch.history.grad_norms)
    assert model.gain.grad.dtype == torch.float8_e4m3fn  # a float8 gradient went into the step's norm
    x[5] = 0.0  # log(0 * 2) = -inf
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.mse_loss) as watch:
            model.zero_grad()
            watch.loss_fn(model(x), y).backward()
            optimizer.step()
    report = raised.value.report
    assert (report.phase, report.module, report.op, report.op_family) == ("forward", "Float8Gain", "log",
                                                                         OpFamily.LOG)
    assert (report.samples, report.value, report.cause) == ([5], "-inf", "log-of-zero")
    assert report.op_inputs[0].zeros == 4 and report.op_inputs[0].max_abs <= 448.0


def test_float8_weights_are_checked_when_the_watch_detaches():
    model = Float8Gain()
    optimizer = torch.optim.SGD(model.body.parameters(), lr=0.01)
    x, y = torch.rand(BATCH, 4) + 0.5, torch.zeros(BATCH, 4)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.mse_loss) as watch:
            model.zero_grad()
            watch.loss_fn(model(x), y).backward()
            optimizer.step()
            with torch.no_grad():
                model.gain[0, 0] = math.nan  # a float8 weight goes bad outside any step
    report = raised.value.report
    assert (report.phase, report.parameter, report.dtype, report.dtype_max) == ("optimizer update", "gain",
                                                                                "float8_e4m3fn", 448.0)


# -- layering: no import cycle, nothing under frameworks/torch calls up into the catalogue --------------------------
TORCH_FOLDER = pathlib.Path(nanlab.__file__).parent / "frameworks" / "torch"


def run_fresh(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def module_level_imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_the_replay_imports_without_the_watch_and_the_watch_not_the_replay():
    assert not any(name.endswith("torch.replay") for name in module_level_imports(TORCH_FOLDER / "watch.py"))
    assert not any(name.endswith("torch.watch") for name in module_level_imports(TORCH_FOLDER / "replay.py"))
    seen = run_fresh("""
        import sys
        import nanlab.frameworks.torch.replay
        print("nanlab.frameworks.torch.watch" in sys.modules)
    """)
    assert seen.split() == ["False"]


def test_nothing_under_frameworks_torch_imports_the_catalogue():
    catalogue = ("nanlab.watching.conclude", "nanlab.diagnosis", "nanlab.registry", "nanlab.causes")
    for path in TORCH_FOLDER.glob("*.py"):
        source = path.read_text()
        assert not any(name in source for name in catalogue), path.name
        assert "conclude" not in " ".join(module_level_imports(path)), path.name
    # In a fresh process with the diagnosis and the catalogue unimportable, every module still imports
    seen = run_fresh("""
        import sys
        for blocked in ("nanlab.diagnosis", "nanlab.causes", "nanlab.watching.conclude"):
            sys.modules[blocked] = None
        import nanlab.frameworks.torch.watch, nanlab.frameworks.torch.replay, nanlab.frameworks.torch.distributed
        import nanlab.frameworks.torch.names, nanlab.frameworks.torch.records, nanlab.frameworks.torch.private
        print(" ".join(sorted(name for name, module in sys.modules.items()
                              if module is not None and name.startswith(("nanlab.diagnosis", "nanlab.causes",
                                                                          "nanlab.watching.conclude")))))
    """)
    assert seen.strip() == ""
