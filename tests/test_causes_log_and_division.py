"""log-of-zero and division-by-zero: the recipes match their causes, and the numeric claims the notebooks make
hold in both frameworks (exact underflow thresholds, the gradient of log at 0, the where() gradient trap)."""
import math

import numpy as np
import pytest

import nanlab
from nanlab.causes import division_by_zero
from nanlab.frameworks import get_framework
from nanlab.seeding import seed_everything

FRAMEWORKS = ("torch", "tensorflow")
CAUSES = ("log-of-zero", "division-by-zero")


def _recipe(cause, framework):
    return nanlab.get_cause(cause).recipe(framework)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("cause", CAUSES)
def test_recipe_settings_are_the_broken_setting_and_the_fixes(cause, framework):
    assert list(_recipe(cause, framework).SETTINGS) == ["broken", *nanlab.get_cause(cause).fix_ids]


def test_the_wrong_fixes_are_marked_as_still_non_finite():
    wrong = {cause: [fix.id for fix in nanlab.get_cause(cause).fixes if fix.hides_problem] for cause in CAUSES}
    assert wrong == {"log-of-zero": ["clip-log-output", "float64"], "division-by-zero": ["where-guard"]}
    for cause in CAUSES:
        for fix in nanlab.get_cause(cause).fixes:
            assert fix.still_nonfinite == fix.hides_problem


def test_a_still_nonfinite_fix_must_be_marked_as_hiding_the_problem():
    with pytest.raises(ValueError, match="hides_problem"):
        nanlab.Fix("oops", "a fix that is not marked wrong", still_nonfinite=True)


# --- log of zero: the numbers -------------------------------------------------------------------------------------

def test_torch_softmax_underflows_to_exactly_zero_past_a_gap_of_104_and_745_in_float64(torch):
    gap = torch.tensor([[0.0, 103.0], [0.0, 105.0]])
    p = torch.softmax(gap, dim=-1)
    assert p[0, 0] > 0 and p[1, 0] == 0  # denormals are kept on CPU: the last nonzero is ~1.4e-45 = e^-103.3
    p64 = torch.softmax(torch.tensor([[0.0, 740.0], [0.0, 750.0]], dtype=torch.float64), dim=-1)
    assert p64[0, 0] > 0 and p64[1, 0] == 0


def test_tensorflow_cpu_flushes_denormals_so_softmax_underflows_past_a_gap_of_87(tf):
    with tf.device("/CPU:0"):
        p = tf.nn.softmax(tf.constant([[0.0, 86.0], [0.0, 89.0]])).numpy()
    assert p[0, 0] > 0 and p[1, 0] == 0  # e^-89 = 2.2e-39 is a float32 denormal: flushed to zero


def _torch_loss_and_grad(torch, loss_fn, logits, y):
    logits = torch.tensor(logits, requires_grad=True)
    loss = loss_fn(logits, torch.tensor(y))
    loss.backward()
    return loss.item(), logits.grad.numpy()


def _tf_loss_and_grad(tf, loss_fn, logits, y):
    logits = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = loss_fn(tf.constant(y), logits)
    return float(loss.numpy()), tape.gradient(loss, logits).numpy()


LOSS_AND_GRAD = {"torch": _torch_loss_and_grad, "tensorflow": _tf_loss_and_grad}
# One confident, correct sample: class 1 leads the others by 200, so their probabilities are exactly 0.0.
CONFIDENT = ([[0.0, 200.0, 10.0, -5.0]], [1])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_log_of_zero_loss_functions_at_an_exact_zero_probability(framework, request):
    module = request.getfixturevalue("torch" if framework == "torch" else "tf")
    recipe, loss_and_grad = _recipe("log-of-zero", framework), LOSS_AND_GRAD[framework]
    loss, grad = loss_and_grad(module, recipe.hand_written_loss, *CONFIDENT)
    assert math.isnan(loss) and np.isnan(grad).all()  # 0 * log(0) = 0 * -inf
    loss, grad = loss_and_grad(module, recipe.clip_log_output_loss, *CONFIDENT)
    assert loss == 0.0 and np.isnan(grad).all(), "clipping log's output: finite loss, NaN gradient (0/0)"
    for fixed in (recipe.clip_input_loss, recipe.add_eps_loss):
        loss, grad = loss_and_grad(module, fixed, *CONFIDENT)
        assert math.isfinite(loss) and np.isfinite(grad).all()
    fused = recipe.SETTINGS["fused-loss"](seed=0, device="cpu").loss_fn
    loss, grad = loss_and_grad(module, fused, *CONFIDENT)
    assert loss == 0.0 and np.isfinite(grad).all()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_clipping_cuts_the_gradient_of_a_confidently_wrong_sample_and_the_fused_loss_keeps_it(framework, request):
    """The true class trails by 30: p ~ 1e-13, below the clip. Clipping the input of log (or its output, at a
    floor above log p) gives that sample no gradient at all; the fused loss gives it the full p - y."""
    module = request.getfixturevalue("torch" if framework == "torch" else "tf")
    recipe, loss_and_grad = _recipe("log-of-zero", framework), LOSS_AND_GRAD[framework]
    wrong = ([[30.0, 0.0, 0.0, 0.0]], [1])
    _, clipped = loss_and_grad(module, recipe.clip_input_loss, *wrong)
    assert np.abs(clipped).max() == 0.0
    fused = recipe.SETTINGS["fused-loss"](seed=0, device="cpu").loss_fn
    _, full = loss_and_grad(module, fused, *wrong)
    assert full[0, 1] == pytest.approx(-1.0) and full[0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_clip_log_output_prints_a_finite_loss_at_the_step_whose_gradient_is_nan(framework):
    broken = nanlab.reproduce("log-of-zero", framework, "cpu", seed=0)
    clipped = nanlab.reproduce("log-of-zero", framework, "cpu", seed=0, fix="clip-log-output")
    step = broken.first_nonfinite_step
    assert math.isnan(broken.losses[step])
    assert clipped.first_nonfinite_step == step
    assert math.isfinite(clipped.losses[step]) and math.isnan(clipped.grad_norms[step])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_float64_only_postpones_the_nan(framework):
    broken = nanlab.reproduce("log-of-zero", framework, "cpu", seed=0)
    double = nanlab.reproduce("log-of-zero", framework, "cpu", seed=0, fix="float64")
    assert broken.first_nonfinite_step is not None and double.first_nonfinite_step is not None
    assert double.first_nonfinite_step > 3 * broken.first_nonfinite_step


# --- division by zero: the numbers and the where() trap ----------------------------------------------------------

def test_division_by_zero_in_ieee_arithmetic(torch, tf):
    a, b = [1.0, 0.0, -1.0], [0.0, 0.0, 0.0]
    expected = [math.inf, math.nan, -math.inf]
    np.testing.assert_array_equal((torch.tensor(a) / torch.tensor(b)).numpy(), expected)
    np.testing.assert_array_equal((tf.constant(a) / tf.constant(b)).numpy(), expected)
    np.testing.assert_array_equal(tf.math.divide_no_nan(tf.constant(a), tf.constant(b)).numpy(), [0.0] * 3)


def test_torch_where_trap_and_the_double_where(torch):
    b = torch.tensor([0.0, 2.0])
    a = torch.tensor([1.0, 1.0], requires_grad=True)
    single = torch.where(b == 0, 0.0, a / b)
    single.sum().backward()
    assert single.tolist() == [0.0, 0.5] and math.isnan(a.grad[0]) and a.grad[1] == 0.5
    a.grad = None
    double = torch.where(b == 0, 0.0, a / torch.where(b == 0, 1.0, b))
    double.sum().backward()
    assert double.tolist() == [0.0, 0.5] and a.grad.tolist() == [0.0, 0.5]
    a.grad = None
    recipe = _recipe("division-by-zero", "torch")
    safe = recipe.divide_no_nan(a, b)
    safe.sum().backward()
    assert safe.tolist() == [0.0, 0.5] and a.grad.tolist() == [0.0, 0.5]


def test_tensorflow_where_trap_the_double_where_and_divide_no_nan(tf):
    a, b = tf.constant([1.0, 1.0]), tf.constant([0.0, 2.0])
    variants = {
        "single where": lambda: tf.where(b == 0, 0.0, a / b),
        "double where": lambda: tf.where(b == 0, 0.0, a / tf.where(b == 0, 1.0, b)),
        "divide_no_nan": lambda: tf.math.divide_no_nan(a, b),
    }
    grads = {}
    for name, compute in variants.items():
        with tf.GradientTape() as tape:
            tape.watch(a)
            value = compute()
        assert value.numpy().tolist() == [0.0, 0.5], name
        grads[name] = tape.gradient(value, a).numpy()
    assert math.isnan(grads["single where"][0]) and grads["single where"][1] == 0.5
    assert grads["double where"].tolist() == [0.0, 0.5] and grads["divide_no_nan"].tolist() == [0.0, 0.5]


# A batch without class 3: its count is 0.
NO_CLASS_3 = ([[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]], [0, 1, 2])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_class_balanced_losses_on_a_batch_that_lacks_a_class(framework, request):
    module = request.getfixturevalue("torch" if framework == "torch" else "tf")
    recipe, loss_and_grad = _recipe("division-by-zero", framework), LOSS_AND_GRAD[framework]
    loss, grad = loss_and_grad(module, recipe.class_balanced_loss, *NO_CLASS_3)
    assert math.isnan(loss) and np.isnan(grad).all()
    loss, grad = loss_and_grad(module, recipe.where_guard_loss, *NO_CLASS_3)
    assert math.isfinite(loss) and np.isnan(grad).all(), "where(count == 0, 0, sum / count): finite, NaN gradient"
    fixed = [recipe.eps_denominator_loss, recipe.guard_count_loss, recipe.safe_divide_loss]
    results = [loss_and_grad(module, loss_fn, *NO_CLASS_3) for loss_fn in fixed]
    for loss, grad in results:
        assert math.isfinite(loss) and np.isfinite(grad).all()
        assert loss == pytest.approx(results[0][0]) and np.allclose(grad, results[0][1])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_where_guard_prints_a_finite_loss_at_the_step_whose_gradient_is_nan(framework):
    broken = nanlab.reproduce("division-by-zero", framework, "cpu", seed=0)
    guarded = nanlab.reproduce("division-by-zero", framework, "cpu", seed=0, fix="where-guard")
    step = broken.first_nonfinite_step
    assert math.isnan(broken.losses[step]) and guarded.first_nonfinite_step == step
    assert math.isfinite(guarded.losses[step]) and math.isnan(guarded.grad_norms[step])


def test_the_broken_step_is_the_first_batch_without_the_rare_class():
    from nanlab.data import minibatch_indices

    for seed in range(3):
        data = division_by_zero.make_data(seed)
        batches = minibatch_indices(len(data.y_train), division_by_zero.BATCH_SIZE, seed)
        first_without = next(step for step, index in enumerate(batches) if 3 not in data.y_train[index])
        assert nanlab.reproduce("division-by-zero", "torch", "cpu", seed=seed).first_nonfinite_step == first_without



# --- division by zero: batch composition (the class-balanced sampler, the batch size) -----------------------------

def test_the_balanced_sampler_never_yields_a_batch_without_a_class():
    data = division_by_zero.make_data(0)
    batches = division_by_zero.balanced_batch_indices(data.y_train, division_by_zero.BATCH_SIZE, seed=0)
    per_class = division_by_zero.BATCH_SIZE // division_by_zero.NUM_CLASSES
    for _ in range(500):  # ~60 passes over the rare class, reshuffled each time it runs out
        counts = np.bincount(data.y_train[next(batches)], minlength=division_by_zero.NUM_CLASSES)
        assert counts.tolist() == [per_class] * division_by_zero.NUM_CLASSES


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_larger_batch_only_postpones_the_absent_class(framework):
    """Batches of 8 miss class 3 in ~43% of steps, of 24 in ~8%: the first NaN comes no later with the smaller one."""
    recipe = _recipe("division-by-zero", framework)
    train = get_framework(framework).loop.train
    for seed in range(3):
        steps = {}
        for batch_size in (8, 24):
            seed_everything(seed, framework)
            args = (seed, "cpu") if framework == "torch" else (seed,)
            training = recipe.build_training(*args, recipe.class_balanced_loss, batch_size=batch_size)
            steps[batch_size] = train(training, 100).first_nonfinite_step
        assert steps[8] is not None and steps[24] is not None and steps[8] <= steps[24], steps


# --- log of a negative number: a Poisson rate head ------------------------------------------------------------------

@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_rate_head_takes_the_log_of_a_negative_number_and_the_log_rate_head_does_not(framework):
    recipe = _recipe("log-of-zero", framework)
    train = get_framework(framework).loop.train
    seed_everything(0, framework)
    broken = recipe.rate_head(0, "cpu")
    history = train(broken, 60)
    assert history.first_nonfinite_step is not None and math.isnan(history.losses[history.first_nonfinite_step])
    seed_everything(0, framework)
    fixed = recipe.log_rate_head(0, "cpu")
    history = train(fixed, 60)
    assert history.first_nonfinite_step is None and np.mean(history.losses[-6:]) < history.losses[0]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_watch_names_log_of_zero_for_the_log_of_a_negative_rate(framework):
    train = get_framework(framework).loop.train
    seed_everything(0, framework)
    training = _recipe("log-of-zero", framework).rate_head(0, "cpu")
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training):
            train(training, 60)
    report = raised.value.report
    assert report.op_name == "log" and report.cause == "log-of-zero", str(report)


def test_the_log_rule_reads_a_nan_from_log_as_a_negative_input():
    from nanlab.causes.log_of_zero.rule import diagnose
    from nanlab.report import NonFiniteReport
    from nanlab.watching.vocabulary import InputStats, OpFamily

    verdict = diagnose(NonFiniteReport("torch", 3, "loss", module="loss", op="log", op_family=OpFamily.LOG,
                                       value="nan", op_inputs=[InputStats("float32", size=4, negatives=1)]))
    assert verdict is not None and verdict.cause == "log-of-zero" and "negative" in verdict.reason
    assert verdict.reason == "`log` got an input below its domain (the log of a negative number is NaN)"
    assert diagnose(NonFiniteReport("torch", 3, "loss", module="loss", op="exp", op_family=OpFamily.EXP,
                                    value="inf")) is None
