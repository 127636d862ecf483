"""The approach to a NaN, not only the crossing: the learning rate of every healthy step (a schedule whose rate keeps
growing is named from it), and each module's largest activation in the replay against its dtype's limit; in both
frameworks, on programs written as a user writes them (not the optimizer-hyperparameters recipe)."""
import numpy as np
import pytest

import nanlab
from nanlab.report import NonFiniteReport
from nanlab.seeding import seed_everything
from nanlab.watching.conclude import conclude
from nanlab.watching.vocabulary import DTYPE_MAX, ActivationMax, OpFamily

GROWTH = 1.3  # the schedule's rate multiplies by this every step: a decay_rate above 1, a LambdaLR gone wrong
STEPS = 60
FEATURES, BATCH = 10, 32


def regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, FEATURES)).astype(np.float32)
    return x, (x @ rng.normal(size=(FEATURES, 1))).astype(np.float32)


def train_torch(torch, growth: float):
    from torch import nn
    from torch.nn import functional as F

    seed_everything(0, "torch")
    model = nn.Sequential(nn.Linear(FEATURES, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: growth ** step)
    x, y = (torch.as_tensor(a) for a in regression_data())
    rates = []
    with nanlab.watch(model, optimizer, F.mse_loss) as watch:
        for _ in range(STEPS):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.zero_grad()
            watch.loss_fn(model(x), y).backward()
            optimizer.step()
            scheduler.step()
    return watch, rates


def fit_keras(growth: float):
    """A Keras schedule as people write one: exponential decay, whose rate was meant to be below 1."""
    from nanlab.frameworks.tensorflow.backend import keras

    seed_everything(0, "tensorflow")
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, decay_steps=1, decay_rate=growth)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(32, activation="tanh"),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    x, y = regression_data()
    watch = nanlab.watch(model)
    model.fit(np.tile(x, (STEPS, 1)), np.tile(y, (STEPS, 1)), batch_size=BATCH, shuffle=False, verbose=0,
              callbacks=[watch])
    return watch, [float(schedule(step)) for step in range(STEPS)]


def test_torch_a_growing_lambda_schedule_is_named_from_the_recorded_rates(torch):
    with pytest.raises(nanlab.NonFiniteError) as raised:
        train_torch(torch, GROWTH)
    report = raised.value.report
    rates = [1e-3 * GROWTH ** step for step in range(report.step)]
    assert 3 < report.step < STEPS and report.learning_rates == pytest.approx(rates)
    assert report.cause == "optimizer-hyperparameters" and "never came down" in report.cause_reason, str(report)
    assert "learning rate" in report.approach(last=3)


def test_keras_a_growing_exponential_schedule_is_named_from_the_recorded_rates(tf):
    with pytest.raises(nanlab.NonFiniteError) as raised:
        fit_keras(GROWTH)
    report = raised.value.report
    rates = [1e-3 * GROWTH ** step for step in range(report.step)]
    assert 3 < report.step < STEPS and report.learning_rates == pytest.approx(rates, rel=1e-5)
    assert report.cause == "optimizer-hyperparameters" and "never came down" in report.cause_reason, str(report)


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_a_healthy_decaying_schedule_is_recorded_step_by_step(framework):
    pytest.importorskip(framework)
    watch, rates = train_torch(pytest.importorskip("torch"), 0.97) if framework == "torch" else fit_keras(0.97)
    assert watch.report is None and watch.step == STEPS
    assert watch.history.learning_rates == pytest.approx(rates, rel=1e-5)
    assert watch.history.to_dict()["learning_rates"] == pytest.approx(rates, rel=1e-5)


def test_torch_the_replay_reports_each_modules_largest_activation(torch):
    """Inputs of scale 1e37 in a user's own MLP: every layer stays finite at a few percent of float32's limit, and
    the loss squares past it; the report shows how close each layer came."""
    from torch import nn
    from torch.nn import functional as F

    seed_everything(0, "torch")
    model = nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = (torch.as_tensor(a) for a in regression_data())
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.mse_loss) as watch:
            optimizer.zero_grad()
            watch.loss_fn(model(x * 1e37), y).backward()
            optimizer.step()
    report = raised.value.report
    maxima = {entry.module: entry for entry in report.activation_maxima}
    assert report.phase == "loss" and list(maxima) == ["0", "1", "2", "3", "4", "Sequential"]
    assert all(entry.dtype == "float32" and not entry.nonfinite for entry in maxima.values())
    assert 1e-2 < maxima["0"].fraction < 1 and maxima["4"].fraction > 1e-3  # a square away from the limit
    assert report.activations().startswith("Largest finite |output| per module in the replay of step 0")
    assert "`0` float32" in report.approach()
    assert NonFiniteReport.from_dict(report.to_dict()).activation_maxima == report.activation_maxima


def test_keras_the_replay_reports_each_layers_largest_activation(tf):
    """The same in Keras: each layer's largest output in the replay, in the order the layers ran."""
    from nanlab.frameworks.tensorflow.backend import keras

    seed_everything(0, "tensorflow")
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(64, activation="relu", name="first"),
                              keras.layers.Dense(64, activation="relu", name="second"),
                              keras.layers.Dense(1, name="out")])
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    x, y = regression_data()
    with pytest.raises(nanlab.NonFiniteError) as raised:
        model.fit(x * 1e37, y, batch_size=BATCH, verbose=0, callbacks=[nanlab.watch(model)])
    report = raised.value.report
    maxima = {entry.module: entry for entry in report.activation_maxima}
    assert report.phase == "loss" and list(maxima) == ["first", "second", "out"]
    assert all(entry.dtype == "float32" and not entry.nonfinite for entry in maxima.values())
    assert 1e-2 < maxima["first"].fraction < 1 and maxima["out"].fraction > 1e-3
    assert "`first` float32" in report.approach()


def test_activation_maxima_read_against_the_dtypes_limit_and_list_the_nearest():
    near = ActivationMax("block.3", "float16", 6.0e4)
    assert near.limit == DTYPE_MAX["float16"] and near.fraction == pytest.approx(6.0e4 / 65504)
    many = [ActivationMax(f"layer{i}", "float32", 10.0 ** i) for i in range(20)] + [near]
    report = conclude(NonFiniteReport("torch", 3, "forward", module="head", op="linear", op_family=OpFamily.MATMUL,
                                      value="inf", activation_maxima=many))
    text = report.activations(listed_at_most=4)
    assert "`block.3` float16: 6e+04 (0.92 of 6.55e+04)" in text and "`layer19` float32" in text
    assert "`layer0`" not in text and "(17 more modules, further from their limit)" in text
    assert ActivationMax("a", "float16", None, 3).merged(ActivationMax("a", "float16", 2.0)) == \
        ActivationMax("a", "float16", 2.0, 3)


def test_a_warmup_that_reached_its_plateau_is_left_to_the_rate_it_held():
    """Rates that grew 50x and then held: the rate the run held failed (high-learning-rate), no schedule still growing;
    the same rates still growing at the NaN are the schedule's."""
    growing = [0.1 * (step + 1) for step in range(50)]
    fields = dict(phase="forward", op="linear", op_family=OpFamily.MATMUL, value="inf",
                  grad_norms=[1.0, 30.0, 900.0, 3e4])
    held = conclude(NonFiniteReport("torch", 60, learning_rates=growing + [5.0] * 10, **fields))
    assert held.cause == "high-learning-rate" and "optimizer-hyperparameters" not in held.verdicts, str(held)
    still = conclude(NonFiniteReport("torch", 50, learning_rates=growing, **fields))
    assert (still.cause, still.runner_up) == ("optimizer-hyperparameters", "high-learning-rate"), str(still)
    assert "was still growing" in still.cause_reason
