"""bad-initialisation: the recipes match the cause, the numbers the notebooks rest on hold in both frameworks, and
the rule names the cause on its own broken runs and on variants written differently, without taking its
neighbours' runs."""
import math

import numpy as np
import pytest

import nanlab
from nanlab.causes import bad_initialisation
from nanlab.report import NonFiniteReport
from nanlab.watching.conclude import conclude
from nanlab.watching.vocabulary import InputStats, OpFamily
from nanlab.seeding import seed_everything

FRAMEWORKS = ("torch", "tensorflow")
CAUSE = nanlab.get_cause("bad-initialisation")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_recipe_settings_are_the_broken_setting_and_the_fixes(framework):
    assert list(CAUSE.recipe(framework).SETTINGS) == ["broken", *CAUSE.fix_ids]


def test_the_vanishing_twin_is_the_one_wrong_fix():
    assert [(fix.id, fix.still_nonfinite) for fix in CAUSE.fixes if fix.hides_problem] == [("small-init", False)]


def _torch_layer_scales(init) -> list[float]:
    """The RMS of the input and of each hidden ReLU layer's output at initialisation, for the recipe's model."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = CAUSE.recipe("torch").make_model(init)
    x = torch.as_tensor(bad_initialisation.make_data(0).x_train[:256])
    scales = [x.pow(2).mean().sqrt().item()]
    with torch.no_grad():
        for module in model:
            x = module(x)
            if isinstance(module, nn.ReLU):
                scales.append(x.double().pow(2).mean().sqrt().item())
    return scales


def test_n01_weights_multiply_the_signal_by_about_sqrt_fan_in_over_2_per_layer(torch):
    recipe = CAUSE.recipe("torch")
    scales = _torch_layer_scales(recipe.standard_normal)
    ratios = [later / earlier for earlier, later in zip(scales[1:], scales[2:])]  # 64 -> 64 layers
    expected = math.sqrt(bad_initialisation.WIDTH / 2)
    assert len(ratios) == bad_initialisation.DEPTH - 1
    assert all(0.5 * expected < ratio < 1.5 * expected for ratio in ratios), ratios
    assert 0.7 * expected < math.exp(np.mean(np.log(ratios))) < 1.3 * expected
    assert scales[-1] > 1e12, "20 layers make the last hidden layer ~1e15 times larger than unit scale"


def test_he_keeps_the_scale_and_small_weights_make_it_vanish(torch):
    recipe = CAUSE.recipe("torch")
    he = _torch_layer_scales(recipe.he_normal)
    small = _torch_layer_scales(recipe.small_normal)
    assert all(0.1 < scale < 10 for scale in he), he
    assert small[-1] < 1e-20 and all(later < earlier for earlier, later in zip(small, small[1:]))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_broken_run_starts_at_a_loss_of_1e12_or_more_and_goes_non_finite_at_step_1(framework):
    for seed in range(3):
        run = nanlab.reproduce(CAUSE, framework, "cpu", seed=seed)
        assert run.first_nonfinite_step == 1, (seed, run.losses)
        assert run.losses[0] > 1e12 and math.isfinite(run.grad_norms[0])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_small_weights_stay_finite_and_flat_at_chance(framework):
    run = nanlab.reproduce(CAUSE, framework, "cpu", seed=0, fix="small-init")
    chance = math.log(bad_initialisation.NUM_CLASSES)
    assert run.finite and not run.learned
    assert all(abs(loss - chance) < 0.1 for loss in run.losses), "the loss never leaves ln 4: nothing is learned"
    assert run.score < 0.5


# --- the rule --------------------------------------------------------------------------------------------------------

def largest(max_abs: float, dtype: str = "float32") -> InputStats:
    """One finite input of the failing op whose largest magnitude is ``max_abs``."""
    return InputStats(dtype, size=16, min=-max_abs, max=max_abs, min_abs=0.01, max_abs=max_abs)


def test_the_rule_reads_a_huge_first_loss_or_huge_values_at_step_0():
    after_one_step = conclude(NonFiniteReport("torch", 1, "forward", module="38", op="linear",
                                              op_family=OpFamily.MATMUL, losses=[9e15], grad_norms=[4e16],
                                              input_max_abs=3.9))
    assert after_one_step.cause == "bad-initialisation" and after_one_step.runner_up is None, str(after_one_step)
    assert "9e+15 at step 0" in after_one_step.cause_reason
    at_step_0 = conclude(NonFiniteReport("tensorflow", 0, "forward", module="dense_40", op="matmul",
                                         op_family=OpFamily.MATMUL, op_inputs=[largest(2e36), largest(4.1)],
                                         input_max_abs=4.0))
    assert at_step_0.cause == "bad-initialisation", str(at_step_0)
    assert "2e+36" in at_step_0.cause_reason


@pytest.mark.parametrize("fields, cause", [
    # unnormalised inputs: a first loss in the thousands, the inputs at 255, NaN at step 4
    (dict(step=4, phase="loss", op="mse_loss", op_family=OpFamily.REDUCE, losses=[6.8e3, 3e6, 2e12, 5e25],
          grad_norms=[1e4, 1e7, 1e13, 1e26], input_max_abs=255.0), "unnormalised-inputs"),
    # huge regression targets: the first loss is huge because the targets are
    (dict(step=1, phase="loss", op="mse_loss", op_family=OpFamily.REDUCE, losses=[1e20], grad_norms=[1e10],
          huge_targets=True), "huge-labels"),
    # a recurrent layer that overflowed at step 1
    (dict(step=1, phase="forward", module="rnn", op="rnn_relu", op_family=OpFamily.OTHER, losses=[1e7],
          recurrent=True), "exploding-rnn-gradients"),
    # float16 overflow at step 0
    (dict(step=0, phase="forward", op="linear", op_family=OpFamily.MATMUL, dtype="float16", dtype_max=65504.0,
          max_abs=2e5, op_inputs=[largest(6e4, dtype="float16")]), "fp16-overflow"),
    # a learning rate too high: a healthy first loss, growth over several steps
    (dict(step=7, phase="forward", op="linear", op_family=OpFamily.MATMUL,
          losses=[1.4, 2.0, 30.0, 900.0, 3e4, 1e7, 1e12], grad_norms=[1.0, 30.0, 900.0, 3e4, 1e7, 1e12, 1e20]),
     "high-learning-rate"),
    # a softmax overflow at step 0: the exp's inputs are ~100, not a million
    (dict(step=0, phase="forward", op="exp", op_family=OpFamily.EXP, value="inf", op_inputs=[largest(120.0)]),
     "softmax-overflow"),
    # a dirty batch at step 0
    (dict(step=0, phase="data", samples=[3], data_findings=["non-finite values in samples 3"], losses=[]),
     "dirty-data"),
])
def test_the_rule_leaves_its_neighbours_runs_to_their_own_rules(fields, cause):
    report = conclude(NonFiniteReport("torch", **fields))
    assert report.cause == cause, str(report)
    assert "bad-initialisation" not in report.verdicts, report.verdicts


def test_a_huge_first_loss_long_before_the_nan_is_not_blamed_on_the_initialisation():
    """The huge values must be there from the very first steps: a NaN at step 40 has had 40 updates to happen."""
    report = conclude(NonFiniteReport("torch", 40, "forward", op="linear", op_family=OpFamily.MATMUL,
                                      losses=[2e7] + [1.0] * 39,
                                      grad_norms=[1.0] * 40, input_max_abs=3.0))
    assert "bad-initialisation" not in report.verdicts


def _watched_report(framework: str, training, steps: int):
    from nanlab.frameworks import get_framework

    loop = get_framework(framework).loop
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training):
            loop.train(training, steps)
    return raised.value.report


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_watch_names_bad_initialisation_on_the_broken_run(framework):
    seed_everything(0, framework)
    training = CAUSE.recipe(framework).SETTINGS["broken"](seed=0, device="cpu")
    report = _watched_report(framework, training, CAUSE.steps)
    assert report.cause == "bad-initialisation", str(report)
    assert report.step == nanlab.reproduce(CAUSE, framework, "cpu", seed=0).first_nonfinite_step == 1
    assert report.losses[0] > 1e12 and report.input_max_abs < 20


def test_the_torch_watch_names_bad_initialisation_on_a_deep_cnn_in_its_own_loop(torch):
    """Another model (12 convolutions, 16 channels, randn weights), other data (8x8 images), the user's own loop."""
    from torch import nn
    from torch.nn import functional as F

    torch.manual_seed(0)
    layers, channels = [], 1
    for _ in range(12):
        layers += [nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU()]
        channels = 16
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(16 * 8 * 8, 3))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter))  # "random weights", written by hand
    images, labels = torch.randn(16, 1, 8, 8), torch.arange(16) % 3
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.cross_entropy) as watch:
            for _ in range(5):
                optimizer.zero_grad()
                watch.loss_fn(model(images), labels).backward()
                optimizer.step()
    report = raised.value.report
    assert report.cause == "bad-initialisation" and report.step <= 1, str(report)


def test_the_keras_watch_names_bad_initialisation_at_step_0_in_fit(tf, keras):
    """Another model (40 Dense layers of 256 units: the forward pass overflows before any update), other data,
    Keras' own model.fit with Adam."""
    keras.utils.set_random_seed(0)
    layers = [keras.Input((10,))]
    for _ in range(40):
        layers.append(keras.layers.Dense(256, activation="relu",
                                         kernel_initializer=keras.initializers.RandomNormal(stddev=1.0)))
    model = keras.Sequential(layers + [keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 10)).astype(np.float32)
    y = x[:, :1].copy()
    with pytest.raises(nanlab.NonFiniteError) as raised:
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[nanlab.watch(model)])
    report = raised.value.report
    assert report.cause == "bad-initialisation" and report.step == 0 and report.phase == "forward", str(report)
