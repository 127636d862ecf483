"""high-learning-rate: the claims its notebooks make beyond the contract, asserted on whole records.

- a linear warmup to the broken rate, then cosine decay (the schedule most scripts use), only postpones the NaN;
- clipping the global norm at a rate of 1000 stays finite but does not learn by the package's rule;
- the watch names layers the reader can find (Keras layers are named in the recipe).
"""
import statistics

import pytest

import nanlab
from nanlab.seeding import seed_everything
from nanlab.frameworks import get_framework

CAUSE = nanlab.get_cause("high-learning-rate")
SEEDS = {"torch": range(5), "tensorflow": range(2)}  # kept short: each seed trains two runs


def _train(framework, training, steps=CAUSE.steps):
    return get_framework(framework).loop.train(training, steps)


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_warmup_to_the_broken_rate_only_postpones_the_nan(framework):
    recipe = CAUSE.recipe(framework)
    for seed in SEEDS[framework]:
        seed_everything(seed, framework)
        warmed = _train(framework, recipe.warmup_to_broken_lr(seed, "cpu"))
        cold = nanlab.reproduce(CAUSE.id, framework, "cpu", seed=seed).first_nonfinite_step
        assert warmed.first_nonfinite_step is not None, f"seed {seed}: warmup stayed finite"
        assert warmed.first_nonfinite_step > cold, f"seed {seed}: warmup should only postpone the NaN"


def test_the_two_warmup_schedules_give_the_same_rates():
    pytest.importorskip("torch")
    from nanlab.causes.high_learning_rate import BROKEN_LR, WARMUP_STEPS

    torch_training = CAUSE.recipe("torch").warmup_to_broken_lr(0, "cpu")
    torch_rates = []
    for _ in range(CAUSE.steps):
        torch_rates.append(torch_training.optimizer.param_groups[0]["lr"])
        torch_training.optimizer.step()
        torch_training.scheduler.step()
    keras_optimizer = CAUSE.recipe("tensorflow").warmup_to_broken_lr(0, "cpu").optimizer
    keras_rates = []
    for step in range(CAUSE.steps):
        keras_optimizer.iterations.assign(step)
        keras_rates.append(float(keras_optimizer.learning_rate))
    assert torch_rates == pytest.approx(keras_rates, rel=1e-5, abs=1e-6)
    assert torch_rates[0] == pytest.approx(BROKEN_LR / WARMUP_STEPS)
    assert max(torch_rates) == pytest.approx(BROKEN_LR) and torch_rates.index(max(torch_rates)) == WARMUP_STEPS


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_clipping_at_a_rate_of_1000_stays_finite_but_does_not_learn(framework):
    recipe = CAUSE.recipe(framework)
    for seed, steps in [(0, CAUSE.steps), (4, 40)]:  # the notebook's own parameters and the papermill test's
        seed_everything(seed, framework)
        if framework == "torch":
            training = recipe.build_training(seed, "cpu", lr=1000.0, max_grad_norm=1.0)
        else:
            from nanlab.frameworks.tensorflow.loop import keras

            training = recipe.build_training(seed, keras.optimizers.SGD(learning_rate=1000.0, global_clipnorm=1.0))
        history = _train(framework, training, steps)
        assert history.first_nonfinite_step is None
        assert not CAUSE.judge_learning(history.losses, training.evaluate(training.model))
        second_half = history.losses[len(history.losses) // 2:]
        assert statistics.median(second_half) > 1000 * history.losses[0]


def test_keras_report_names_the_recipe_layers():
    training = CAUSE.recipe("tensorflow").broken(0, "cpu")
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training):
            _train("tensorflow", training)
    report = raised.value.report
    assert report.cause == CAUSE.id
    assert report.module in {"hidden_1", "hidden_2", "logits"}, report.module
    assert "dense" not in str(report).lower()
