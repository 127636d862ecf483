"""optimizer-hyperparameters: decoupled weight decay with lr * wd > 2, momentum >= 1, a schedule whose rate keeps
growing. The numbers the notebooks state (the per-step factor 1 - lr * wd, the velocity under momentum 1 and 1.05,
which settings each framework refuses), measured in both frameworks (torch 2.13 / TF 2.21 on CPU); the rule on
evidence in the vocabulary; and nanlab.watch naming the cause on the recipe and on programs written differently
(the user's own torch loop with SGD(momentum=1.05) or a clipped AdamW, Keras fit with AdamW or Adam(beta_1=1))."""
import math
from dataclasses import dataclass, field

import numpy as np
import pytest

import nanlab
from nanlab.causes.optimizer_hyperparameters import (BROKEN_MOMENTUM, BROKEN_WEIGHT_DECAY, LR, PEAK_LR,
                                                     WARMUP_STEPS)
from nanlab.diagnosis import DIRECT, LOCATED, TREND, rank
from nanlab.frameworks import get_framework
from nanlab.report import NonFiniteReport
from nanlab.seeding import seed_everything
from nanlab.watching.conclude import conclude
from nanlab.watching.vocabulary import OpFamily, OptimizerFacts

CAUSE = nanlab.get_cause("optimizer-hyperparameters")
FRAMEWORKS = ("torch", "tensorflow")
GROWING = [1.0, 30.0, 900.0, 3e4]  # a gradient norm that grew 3e4x: what high-learning-rate reads
ADAMW_BROKEN = OptimizerFacts("AdamW", learning_rate=3e-3, weight_decay=1000.0, eps=1e-8, betas=(0.9, 0.999),
                              param_dtype="float32")
ADAMW_SANE = OptimizerFacts("AdamW", learning_rate=3e-3, weight_decay=1e-2, eps=1e-8, betas=(0.9, 0.999),
                            param_dtype="float32")


def _recipe(framework):
    return CAUSE.recipe(framework)


def _training(framework, setting, seed=0):
    seed_everything(seed, framework)
    recipe = _recipe(framework)
    return (recipe.SETTINGS.get(setting) or getattr(recipe, setting))(seed=seed, device="cpu")


def _watch(framework, setting, steps=None, seed=0):
    training = _training(framework, setting, seed)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training):
            get_framework(framework).loop.train(training, steps or CAUSE.steps)
    return raised.value.report


# -- the catalogue entry ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_recipe_settings_are_the_broken_setting_and_the_fixes(framework):
    assert list(_recipe(framework).SETTINGS) == ["broken", *CAUSE.fix_ids]


def test_the_wrong_fix_is_clipping_and_it_still_goes_non_finite():
    wrong = [(fix.id, fix.still_nonfinite) for fix in CAUSE.fixes if fix.hides_problem]
    assert wrong == [("clip-grad-norm", True)]
    assert LR * BROKEN_WEIGHT_DECAY == pytest.approx(3.0)  # the factor 1 - 3 = -2 every note and test states


# -- the rule on evidence in the vocabulary -----------------------------------------------------------------------
@pytest.mark.parametrize("fields, specificity, runner_up", [
    # the recipe's torch report: the loss overflowed after 42 doublings; the gradient norm's trend is far below
    (dict(phase="loss", op="cross_entropy", op_family=OpFamily.LOGIT_LOSS, value="inf", grad_norms=GROWING,
          optimizer=ADAMW_BROKEN), DIRECT + 0.05, None),
    # Keras: the update itself wrote NaN into a kernel
    (dict(phase="optimizer update", op="apply_gradients", op_family=OpFamily.OTHER,
          optimizer=OptimizerFacts("AdamW", learning_rate=1e-2, weight_decay=300.0, eps=1e-7, betas=(0.9, 0.999))),
     DIRECT + 0.05, None),
    # the overflow landed in a hand-written log (an underflowed probability): the setting is still the cause, and
    # the log is named beside it
    (dict(phase="loss", op="log", op_family=OpFamily.LOG, value="-inf", optimizer=ADAMW_BROKEN), DIRECT + 0.05,
     "log-of-zero"),
    # lr * wd between 1 and 2: the weights flip sign every step and shrink: a setting that cannot train
    (dict(phase="forward", op="linear", op_family=OpFamily.MATMUL, value="nan",
          optimizer=OptimizerFacts("AdamW", learning_rate=1e-3, weight_decay=1500.0)), LOCATED, None),
    (dict(phase="forward", op="matmul", op_family=OpFamily.MATMUL, value="-inf", grad_norms=GROWING,
          optimizer=OptimizerFacts("SGD", learning_rate=0.01, weight_decay=0.0, momentum=1.05)), DIRECT + 0.05, None),
    (dict(phase="forward", op="matmul", op_family=OpFamily.MATMUL, value="-inf", grad_norms=GROWING,
          optimizer=OptimizerFacts("SGD", learning_rate=0.05, momentum=1.0)), LOCATED, None),
    (dict(phase="optimizer update", op="apply_gradients", op_family=OpFamily.OTHER,
          optimizer=OptimizerFacts("Adam", learning_rate=1e-3, eps=1e-7, betas=(1.0, 0.999))), DIRECT + 0.05, None),
    (dict(phase="optimizer update", op="apply_gradients", op_family=OpFamily.OTHER,
          optimizer=OptimizerFacts("Adam", learning_rate=1e-3, eps=1e-7, betas=(0.9, 1.0001))), DIRECT + 0.05, None),
])
def test_the_rule_names_the_setting_from_the_optimizer_facts(fields, specificity, runner_up):
    report = conclude(NonFiniteReport("torch", step=40, **fields))
    assert report.cause == CAUSE.id, report.cause_reason
    assert rank(report)[0].specificity == pytest.approx(specificity)
    assert report.runner_up == runner_up, report.runner_up_reason


def test_the_reason_says_the_per_step_factor():
    report = conclude(NonFiniteReport("torch", step=42, phase="loss", op="cross_entropy",
                                      op_family=OpFamily.LOGIT_LOSS, value="inf", optimizer=ADAMW_BROKEN))
    assert "lr * weight_decay = 0.003 * 1000 = 3" in report.cause_reason
    assert "1 - 3 = -2 per step" in report.cause_reason and "clipping cannot stop it" in report.cause_reason
    momentum = conclude(NonFiniteReport("torch", step=79, phase="forward", op="linear", op_family=OpFamily.MATMUL,
                                        optimizer=OptimizerFacts("SGD", learning_rate=0.05, momentum=1.05)))
    assert "grows like 1.05^t" in momentum.cause_reason


@pytest.mark.parametrize("fields", [
    # sane settings: AdamW's default decay, momentum 0.9 and 0.99, Adam's default betas, Keras' AdamW default
    dict(phase="forward", op="linear", op_family=OpFamily.MATMUL, value="inf", grad_norms=GROWING,
         optimizer=ADAMW_SANE),
    dict(phase="forward", op="linear", op_family=OpFamily.MATMUL, value="inf", grad_norms=GROWING,
         optimizer=OptimizerFacts("SGD", learning_rate=5.0, weight_decay=0.0, momentum=0.9)),
    dict(phase="forward", op="linear", op_family=OpFamily.MATMUL, value="inf",
         optimizer=OptimizerFacts("SGD", learning_rate=0.1, weight_decay=1e-4, momentum=0.99)),
    dict(phase="optimizer update", op="apply_gradients", op_family=OpFamily.OTHER,
         optimizer=OptimizerFacts("AdamW", learning_rate=1e-3, weight_decay=0.004, eps=1e-7, betas=(0.9, 0.999))),
    # lr * wd just below 1 (a strong decay, still a shrinking factor 0.1)
    dict(phase="forward", op="linear", op_family=OpFamily.MATMUL, value="nan",
         optimizer=OptimizerFacts("AdamW", learning_rate=1e-3, weight_decay=900.0)),
    # no optimizer facts; and a bad batch is never the optimizer's doing
    dict(phase="forward", op="linear", op_family=OpFamily.MATMUL, value="inf", grad_norms=GROWING),
    dict(phase="data", samples=[3], data_findings=["NaN in x"], optimizer=ADAMW_BROKEN),
])
def test_the_rule_stays_silent_on_sane_settings(fields):
    verdicts = [verdict.cause for verdict in rank(NonFiniteReport("torch", step=5, **fields))]
    assert CAUSE.id not in verdicts, verdicts


def test_a_sane_optimizer_leaves_a_growing_gradient_norm_to_high_learning_rate():
    report = conclude(NonFiniteReport("torch", step=9, phase="forward", op="linear", op_family=OpFamily.MATMUL,
                                      value="inf", grad_norms=GROWING,
                                      optimizer=OptimizerFacts("SGD", learning_rate=5.0, momentum=0.0)))
    assert report.cause == "high-learning-rate" and CAUSE.id not in report.verdicts


@dataclass
class ReportWithRates(NonFiniteReport):
    """A report that also carries the learning rate of each step before the NaN (no watch records it yet)."""

    learning_rates: list[float] = field(default_factory=list)


def test_a_rate_that_only_grew_is_named_where_the_rates_are_recorded():
    rates = [PEAK_LR * (step + 1) / WARMUP_STEPS for step in range(36)]  # the torch variant's rates up to its NaN
    report = conclude(ReportWithRates("torch", step=36, phase="forward", op="linear", op_family=OpFamily.MATMUL,
                                      value="-inf", grad_norms=GROWING, learning_rates=rates,
                                      optimizer=OptimizerFacts("SGD", learning_rate=0.74, momentum=0.9)))
    assert report.cause == CAUSE.id and report.runner_up == "high-learning-rate", str(report)
    assert rank(report)[0].specificity == pytest.approx(TREND + 0.1)
    assert "grew 36x" in report.cause_reason
    ended = [min(rate, PEAK_LR) * (0.5 if step > 20 else 1.0) for step, rate in enumerate(rates)]  # came down
    report = conclude(ReportWithRates("torch", step=36, phase="forward", op="linear", op_family=OpFamily.MATMUL,
                                      value="-inf", grad_norms=GROWING, learning_rates=ended,
                                      optimizer=OptimizerFacts("SGD", learning_rate=0.05, momentum=0.9)))
    assert report.cause == "high-learning-rate" and CAUSE.id not in report.verdicts


@dataclass
class FactsWithCoupling(OptimizerFacts):
    """Optimizer facts that also say whether the weight decay was decoupled (no framework records it yet)."""

    decoupled_weight_decay: bool | None = None


def test_a_coupled_l2_term_is_no_per_step_factor_where_the_facts_say_so():
    """torch's Adam adds wd * w to the gradient and divides by sqrt(v): lr * wd is no factor on the weights there."""
    fields = dict(phase="forward", op="linear", op_family=OpFamily.MATMUL, value="inf")
    coupled = FactsWithCoupling("Adam", learning_rate=1e-2, weight_decay=300.0, decoupled_weight_decay=False)
    assert CAUSE.id not in [verdict.cause for verdict in rank(NonFiniteReport("torch", 5, optimizer=coupled,
                                                                              **fields))]
    decoupled = FactsWithCoupling("Adam", learning_rate=1e-2, weight_decay=300.0, decoupled_weight_decay=True)
    assert conclude(NonFiniteReport("torch", 5, optimizer=decoupled, **fields)).cause == CAUSE.id


# -- the mechanism, PyTorch ---------------------------------------------------------------------------------------
def test_torch_adamw_multiplies_each_weight_by_minus_two_per_step(torch):
    """With a zero gradient Adam's step is 0, so only the decay acts: w <- (1 - lr * wd) w = -2 w, exactly."""
    weight = torch.nn.Parameter(torch.tensor([1.0, -0.5]))
    optimizer = torch.optim.AdamW([weight], lr=LR, weight_decay=BROKEN_WEIGHT_DECAY)
    values = []
    for _ in range(128):
        weight.grad = torch.zeros_like(weight)
        optimizer.step()
        values.append(weight.detach().clone())
    assert values[0].tolist() == [-2.0, 1.0] and values[1].tolist() == [4.0, -2.0]
    assert values[126].tolist() == [-(2.0 ** 127), 2.0 ** 126]  # (-2)^t, flipping sign every step
    assert values[127][0].item() == math.inf  # 2^128 is past float32's 3.4e38


def test_torch_adamw_at_lr_times_wd_one_zeroes_the_weights(torch):
    weight = torch.nn.Parameter(torch.tensor([1.0, -0.5]))
    optimizer = torch.optim.AdamW([weight], lr=1e-3, weight_decay=1000.0)
    weight.grad = torch.zeros_like(weight)
    optimizer.step()
    assert weight.detach().abs().tolist() == [0.0, 0.0]


def test_torch_clipping_does_not_touch_the_decay(torch):
    """A huge gradient clipped to norm 1: Adam's step is still about lr per weight, the decay still -2 w."""
    weight = torch.nn.Parameter(torch.tensor([1.0, -0.5]))
    optimizer = torch.optim.AdamW([weight], lr=LR, weight_decay=BROKEN_WEIGHT_DECAY)
    weight.grad = torch.tensor([1e6, 1e6])
    torch.nn.utils.clip_grad_norm_([weight], 1.0)
    optimizer.step()
    assert weight.detach().tolist() == pytest.approx([-2.0 - LR, 1.0 - LR], abs=1e-6)


@pytest.mark.parametrize("momentum, expected", [
    (0.9, lambda t: (1 - 0.9 ** t) / 0.1),  # bounded by 1 / (1 - 0.9) = 10
    (1.0, lambda t: t),  # the sum of every past gradient
    (BROKEN_MOMENTUM, lambda t: (BROKEN_MOMENTUM ** t - 1) / (BROKEN_MOMENTUM - 1)),  # geometric
])
def test_torch_sgd_velocity_after_t_steps_of_a_constant_gradient(torch, momentum, expected):
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.01, momentum=momentum)  # torch refuses only a negative momentum
    for step in range(1, 101):
        weight.grad = torch.ones(1)
        optimizer.step()
        if step in (10, 100):
            velocity = optimizer.state[weight]["momentum_buffer"].item()
            assert velocity == pytest.approx(expected(step), rel=1e-4)


def test_torch_refuses_betas_of_one_and_accepts_momentum_above_one(torch):
    weight = torch.nn.Parameter(torch.zeros(1))
    for betas in ((1.0, 0.999), (0.9, 1.0)):
        with pytest.raises(ValueError, match="Invalid beta parameter"):
            torch.optim.Adam([weight], betas=betas)
    assert torch.optim.SGD([weight], lr=0.1, momentum=1.05).param_groups[0]["momentum"] == 1.05


def test_torch_the_variant_schedule_only_grows_and_the_fix_comes_down(torch):
    training = _training("torch", "warmup_without_end_training")
    rates = []
    for _ in range(50):
        rates.append(training.optimizer.param_groups[0]["lr"])
        training.optimizer.step()
        training.scheduler.step()
    assert rates[0] == pytest.approx(PEAK_LR / WARMUP_STEPS) and rates[-1] == pytest.approx(PEAK_LR * 10)
    assert all(later > earlier for earlier, later in zip(rates, rates[1:]))
    fixed = _training("torch", "decaying-schedule")
    rates = []
    for _ in range(CAUSE.steps):
        rates.append(fixed.optimizer.param_groups[0]["lr"])
        fixed.optimizer.step()
        fixed.scheduler.step()
    assert max(rates) == pytest.approx(PEAK_LR) and rates[-1] < PEAK_LR / 100


# -- the mechanism, Keras -----------------------------------------------------------------------------------------
def _keras_decay_trajectory(tf, keras, compiled: bool, steps: int = 130) -> list:
    variable = tf.Variable([1.0, -0.5])
    optimizer = keras.optimizers.AdamW(learning_rate=LR, weight_decay=BROKEN_WEIGHT_DECAY)
    optimizer.build([variable])
    update = lambda: optimizer.apply([tf.zeros(2)], [variable])  # noqa: E731
    update = tf.function(update) if compiled else update
    values = []
    for _ in range(steps):
        update()
        values.append(variable.numpy().copy())
    return values


def test_keras_adamw_multiplies_each_weight_by_minus_two(tf, keras):
    """Keras writes the decay as w - w * wd * lr. Compiled (as fit and nanlab's loop run the update) the factor -2
    takes w = 1 to inf at step 128, as in PyTorch; run eagerly, w * wd overflows first (2^119 * 1000 > 3.4e38) and
    at the next step that weight's inf - inf is NaN. (Measured: with Grappler's arithmetic optimization off, the
    compiled update overflows at 119 too, so the graph computes w * (wd * lr).)"""
    for compiled, first_inf in ((True, 127), (False, 119)):
        values = _keras_decay_trajectory(tf, keras, compiled)
        assert values[0].tolist() == [-2.0, 1.0] and values[1].tolist() == [4.0, -2.0]
        assert values[117].tolist() == [2.0 ** 118, -(2.0 ** 117)]  # (-2)^(t + 1), flipping sign every step
        first_nonfinite = next(step for step, value in enumerate(values) if not np.isfinite(value).all())
        assert first_nonfinite == first_inf and np.isinf(values[first_inf][0]), compiled
        assert np.isnan(values[first_inf + 1][0]) or compiled  # eager: inf - inf * wd * lr


def test_keras_clipping_does_not_touch_the_decay(tf, keras):
    variable = tf.Variable([1.0, -0.5])
    optimizer = keras.optimizers.AdamW(learning_rate=LR, weight_decay=BROKEN_WEIGHT_DECAY, global_clipnorm=1.0)
    optimizer.apply([tf.constant([1e6, 1e6])], [variable])
    assert variable.numpy().tolist() == pytest.approx([-2.0 - LR, 1.0 - LR], abs=1e-5)


def test_keras_refuses_momentum_above_one_and_accepts_one(tf, keras):
    with pytest.raises(ValueError, match="between"):
        keras.optimizers.SGD(momentum=BROKEN_MOMENTUM)
    variable = tf.Variable([0.0])
    optimizer = keras.optimizers.SGD(learning_rate=0.1, momentum=1.0)
    for _ in range(5):
        optimizer.apply([tf.constant([1.0])], [variable])
    assert optimizer.momentums[0].numpy().tolist() == pytest.approx([-0.5])  # -lr * (sum of 5 gradients)


def test_keras_accepts_betas_of_one(tf, keras):
    """beta_1 = 1: the bias correction 1 - 1^t is 0 and the first update is NaN; beta_2 = 1: alpha has
    sqrt(1 - 1^t) = 0 as a factor, so Adam never moves (finite, and it cannot learn)."""
    variable = tf.Variable([1.0, -0.5])
    keras.optimizers.Adam(learning_rate=0.1, beta_1=1.0).apply([tf.constant([0.3, -0.2])], [variable])
    assert np.isnan(variable.numpy()).all()
    variable = tf.Variable([1.0, -0.5])
    keras.optimizers.Adam(learning_rate=0.1, beta_2=1.0).apply([tf.constant([0.3, -0.2])], [variable])
    assert variable.numpy().tolist() == [1.0, -0.5]


# -- nanlab.watch on the recipe -----------------------------------------------------------------------------------
def test_the_watch_names_the_cause_of_the_torch_broken_run():
    report = _watch("torch", "broken")
    assert (report.cause, report.phase, report.op_family) == (CAUSE.id, "loss", OpFamily.LOGIT_LOSS), str(report)
    assert report.optimizer.decay_per_step == pytest.approx(3.0) and report.runner_up is None
    assert report.step == nanlab.reproduce(CAUSE, "torch", "cpu", seed=0).first_nonfinite_step


def test_the_watch_names_the_cause_of_the_keras_broken_run():
    """Keras' decay w * wd overflows inside the update (see above): the watch catches the update that wrote the
    NaN, one step before the loop's first non-finite loss."""
    report = _watch("tensorflow", "broken")
    assert (report.cause, report.phase) == (CAUSE.id, "optimizer update"), str(report)
    assert report.optimizer.kind == "AdamW" and report.optimizer.decay_per_step == pytest.approx(3.0)
    assert report.step + 1 == nanlab.reproduce(CAUSE, "tensorflow", "cpu", seed=0).first_nonfinite_step


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_watch_names_the_cause_of_the_clipped_run(framework):
    report = _watch(framework, "clip-grad-norm")
    assert report.cause == CAUSE.id and "clipping cannot stop it" in report.cause_reason, str(report)


@pytest.mark.parametrize("framework, setting, steps", [
    ("torch", "momentum_above_one", 100), ("torch", "momentum_one", 200), ("tensorflow", "momentum_one", 200)])
def test_the_watch_names_the_momentum_variants(framework, setting, steps):
    report = _watch(framework, setting, steps)
    assert report.cause == CAUSE.id and report.phase == "forward", str(report)
    assert report.optimizer.kind == "SGD" and report.optimizer.momentum >= 1


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_growing_schedule_is_named_from_the_rates_the_watch_recorded(framework):
    """The watch records every healthy step's rate (``report.learning_rates``): one that only grew is named, with the
    gradient norm's growth (high-learning-rate) beside it."""
    report = _watch(framework, "warmup_without_end_training")
    assert report.cause == CAUSE.id and report.runner_up == "high-learning-rate", str(report)
    assert report.optimizer.learning_rate > PEAK_LR * 5 and report.learning_rates[-1] > PEAK_LR * 5


# -- programs written differently from the recipe -----------------------------------------------------------------
def test_a_torch_loop_with_sgd_momentum_above_one(torch):
    """A regression MLP with tanh, full batch, the user's own loop: SGD(momentum=1.05), a small learning rate."""
    from torch import nn

    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = 2 * x[:, :1] + 0.1 * torch.randn(64, 1)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=1.05)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, nn.functional.mse_loss) as watch:
            for _ in range(3000):
                optimizer.zero_grad()
                watch.loss_fn(model(x), y).backward()
                optimizer.step()
    report = raised.value.report
    assert (report.cause, report.phase) == (CAUSE.id, "loss"), str(report)
    assert "momentum is 1.05 > 1" in report.cause_reason


def test_a_torch_loop_with_a_clipped_adamw_on_a_conv_net(torch):
    """A small CNN on random images, AdamW(lr=1e-2, weight_decay=300) and the user's own clip_grad_norm_."""
    from torch import nn

    torch.manual_seed(0)
    images, labels = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=300)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, nn.functional.cross_entropy) as watch:
            for _ in range(300):
                optimizer.zero_grad()
                watch.loss_fn(model(images), labels).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
    report = raised.value.report
    assert report.cause == CAUSE.id and "1 - 3 = -2 per step" in report.cause_reason, str(report)


def _keras_fit(keras, optimizer, activation="gelu"):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = 3 * x[:, :1]
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation=activation),
                              keras.layers.Dense(1, name="out")])
    model.compile(optimizer=optimizer, loss="mse")
    with pytest.raises(nanlab.NonFiniteError) as raised:
        model.fit(x, y, batch_size=16, epochs=50, shuffle=False, verbose=0, callbacks=[nanlab.watch(model)])
    return raised.value.report


def test_keras_fit_with_adamw_and_a_huge_weight_decay(tf, keras):
    """A regression fit (MSE, GELU), AdamW(learning_rate=1e-2, weight_decay=300): lr * wd = 3 again."""
    report = _keras_fit(keras, keras.optimizers.AdamW(learning_rate=1e-2, weight_decay=300.0))
    assert (report.cause, report.phase) == (CAUSE.id, "optimizer update"), str(report)
    assert "1 - 3 = -2 per step" in report.cause_reason


def test_keras_fit_with_adam_beta_1_of_one(tf, keras):
    report = _keras_fit(keras, keras.optimizers.Adam(learning_rate=1e-3, beta_1=1.0))
    assert (report.cause, report.phase, report.step) == (CAUSE.id, "optimizer update", 0), str(report)
    assert "beta_1 = 1" in report.cause_reason
