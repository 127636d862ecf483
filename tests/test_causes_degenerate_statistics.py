"""degenerate-statistics: the unbiased std of one element and the mean of an empty selection. The numeric facts the
notebooks state hold in both frameworks (torch 2.13 / TF 2.21 on CPU); the recipe's loaders end every epoch with a
batch of one; the rule names the cause on synthetic evidence, on the broken runs, on the wrong fixes, and on programs
written differently (a per-group advantage, an empty selection, an input standardisation under Keras fit), and takes
no other cause's verdict."""
import math
import warnings

import numpy as np
import pytest

import nanlab
from nanlab.causes import degenerate_statistics as facts
from nanlab.frameworks import get_framework
from nanlab.report import NonFiniteReport
from nanlab.seeding import seed_everything
from nanlab.watching.conclude import conclude
from nanlab.watching.vocabulary import InputStats, OpFamily

CAUSE = "degenerate-statistics"
FRAMEWORKS = ("torch", "tensorflow")
NAN_STEP = facts.FULL_BATCHES  # the epoch's last step, a batch of one


def _recipe(framework):
    return nanlab.get_cause(CAUSE).recipe(framework)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_recipe_settings_are_the_broken_setting_and_the_fixes(framework):
    assert list(_recipe(framework).SETTINGS) == ["broken", *nanlab.get_cause(CAUSE).fix_ids]


def test_the_wrong_fixes_are_the_measured_ones():
    cause = nanlab.get_cause(CAUSE)
    assert [(fix.id, fix.still_nonfinite) for fix in cause.fixes if fix.hides_problem] == [
        ("eps-on-std", True), ("nan-to-zero", True)]
    assert cause.number == 16 and cause.frameworks == FRAMEWORKS


def test_the_data_leaves_one_sample_after_the_full_batches():
    data = facts.make_data(0)
    assert len(data.x_train) == facts.NUM_TRAIN == 8 * facts.BATCH_SIZE + 1 and len(data.x_eval) == 85


# --- the numeric facts -------------------------------------------------------------------------------------------

def test_torch_std_and_var_of_one_element_are_nan_and_warn_the_population_ones_are_zero(torch):
    one = torch.tensor([3.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert math.isnan(one.std().item()) and math.isnan(one.var().item())
    assert any("degrees of freedom is <= 0" in str(warning.message) for warning in caught)
    assert torch.var(one, unbiased=False).item() == 0.0 and one.var(correction=0).item() == 0.0
    assert one.std(correction=0).item() == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.isnan(torch.randn(1, 5).std(dim=0)).all()  # pytorch#4320: a dim with a single entry
    assert torch.isfinite(torch.randn(2, 5).std(dim=0)).all()
    assert math.isnan(torch.tensor([]).mean().item())  # the mean of an empty selection: 0 / 0
    assert torch.tensor([]).sum().item() == 0.0


def test_torch_batch_norm_refuses_a_batch_of_one_while_training(torch):
    layer = torch.nn.BatchNorm1d(4)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        layer(torch.randn(1, 4))
    layer.eval()
    assert torch.isfinite(layer(torch.randn(1, 4))).all()  # evaluation uses the running statistics


def test_tensorflow_reduce_std_is_the_population_std_and_the_hand_written_unbiased_one_is_nan(tf, keras):
    one = tf.constant([[3.0, -1.0]])
    assert tf.math.reduce_std(one, axis=0).numpy().tolist() == [0.0, 0.0]
    assert tf.math.reduce_variance(one, axis=0).numpy().tolist() == [0.0, 0.0]
    assert np.isnan(_recipe("tensorflow").unbiased_variance(one).numpy()).all()
    assert np.isnan(tf.reduce_mean(tf.zeros((0,))).numpy())  # the mean of an empty selection
    assert np.isnan(tf.reduce_mean(tf.boolean_mask(tf.constant([1.0, 2.0]), [False, False])).numpy())
    out = keras.layers.BatchNormalization()(one, training=True)  # Keras: the population variance and epsilon
    assert out.numpy().tolist() == [[0.0, 0.0]]


def _torch_at_a_batch_of_one(torch, standardize):
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = standardize(layer(torch.randn(1, 3)))
        (out * torch.arange(4.0)).sum().backward()
    return out.detach().numpy(), layer.weight.grad.numpy()


def _tf_at_a_batch_of_one(tf, keras, standardize):
    keras.utils.set_random_seed(0)
    layer = keras.layers.Dense(4)
    x = tf.random.normal((1, 3))
    with tf.GradientTape() as tape:
        out = standardize(layer(x))
        total = tf.reduce_sum(out * tf.range(4.0))
    return out.numpy(), tape.gradient(total, layer.kernel).numpy()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_each_standardisation_at_a_batch_of_one(framework, request):
    """broken and eps-on-std: NaN value; nan-to-zero: a finite value (0) and a NaN gradient; population-std: 0 and a
    finite gradient."""
    recipe = _recipe(framework)
    if framework == "torch":
        at_one = lambda fn: _torch_at_a_batch_of_one(request.getfixturevalue("torch"), fn)  # noqa: E731
    else:
        at_one = lambda fn: _tf_at_a_batch_of_one(request.getfixturevalue("tf"),  # noqa: E731
                                                  request.getfixturevalue("keras"), fn)
    for standardize in (recipe.batch_standardize, recipe.eps_on_std):
        value, gradient = at_one(standardize)
        assert np.isnan(value).all() and np.isnan(gradient).all(), standardize.__name__
    value, gradient = at_one(recipe.nan_to_zero_variance)
    assert value.tolist() == [[0.0] * 4] and np.isnan(gradient).all()
    value, gradient = at_one(recipe.population_standardize)
    assert value.tolist() == [[0.0] * 4] and np.isfinite(gradient).all()


def test_tensorflow_divide_no_nan_does_not_help_a_nan_std(tf):
    h = tf.constant([[1.0, 2.0]])
    std = tf.sqrt(_recipe("tensorflow").unbiased_variance(h))
    assert np.isnan(tf.math.divide_no_nan(h - tf.reduce_mean(h, axis=0), std).numpy()).all()


def test_the_loaders_end_every_epoch_with_a_batch_of_one(torch, tf):
    data = facts.make_data(0)
    sizes = [len(x) for x, _ in _recipe("torch").make_loader(data.x_train, data.y_train, 0, drop_last=False)]
    assert sizes == [32] * 8 + [1]
    sizes = [len(x) for x, _ in _recipe("torch").make_loader(data.x_train, data.y_train, 0, drop_last=True)]
    assert sizes == [32] * 8
    dataset = _recipe("tensorflow").make_dataset(data.x_train, data.y_train, 0, drop_remainder=False)
    assert [int(x.shape[0]) for x, _ in dataset.take(18)] == ([32] * 8 + [1]) * 2
    dataset = _recipe("tensorflow").make_dataset(data.x_train, data.y_train, 0, drop_remainder=True)
    assert [int(x.shape[0]) for x, _ in dataset.take(9)] == [32] * 9


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.filterwarnings("ignore:.*degrees of freedom")
def test_the_nan_comes_at_the_epochs_last_step_and_the_wrong_fixes_do_not_move_it(framework):
    broken = nanlab.reproduce(CAUSE, framework, "cpu", seed=1)
    eps = nanlab.reproduce(CAUSE, framework, "cpu", seed=1, fix="eps-on-std")
    zeroed = nanlab.reproduce(CAUSE, framework, "cpu", seed=1, fix="nan-to-zero")
    assert broken.first_nonfinite_step == eps.first_nonfinite_step == zeroed.first_nonfinite_step == NAN_STEP
    assert math.isnan(broken.losses[NAN_STEP]) and math.isnan(eps.losses[NAN_STEP])
    assert math.isfinite(zeroed.losses[NAN_STEP]) and math.isnan(zeroed.grad_norms[NAN_STEP])  # looks fixed


# --- the rule on evidence in the vocabulary ----------------------------------------------------------------------

def stats(size: int, **counts) -> InputStats:
    """One float32 input of the failing op; finite values in -1..1 unless ``counts`` say otherwise."""
    values = dict(min=-1.0, max=1.0, min_abs=0.1, max_abs=1.0) if size else {}
    return InputStats("float32", size=size, **{**values, **counts})


def zeros(size: int) -> InputStats:
    return InputStats("float32", size=size, zeros=size, min=0.0, max=0.0, min_abs=0.0, max_abs=0.0)


@pytest.mark.parametrize("fields, verdicts", [
    # torch's x.std(dim=0) over the last batch of one sample
    (dict(phase="forward", op="std", op_family=OpFamily.STATISTIC, value="nan", batch_size=1,
          op_inputs=[stats(32, negatives=16)]), [CAUSE]),
    # a group of one inside a larger batch: the std's input holds one element
    (dict(phase="loss", op="std", op_family=OpFamily.STATISTIC, value="nan", batch_size=16,
          op_inputs=[stats(1, negatives=1)]), [CAUSE]),
    # a std of an empty selection
    (dict(phase="loss", op="var", op_family=OpFamily.STATISTIC, value="nan", batch_size=16, op_inputs=[stats(0)]),
     [CAUSE]),
    # an axis of length 1 that is not the batch's: only the op and the finite inputs say so (the located level)
    (dict(phase="loss", op="std", op_family=OpFamily.STATISTIC, value="nan", batch_size=16,
          op_inputs=[stats(16, negatives=7)]), [CAUSE]),
    # the mean of an empty selection (torch's x[mask].mean(), TensorFlow's reduce_mean of a boolean_mask)
    (dict(phase="loss", op="mean", op_family=OpFamily.REDUCE, value="nan", batch_size=8, op_inputs=[stats(0)]),
     [CAUSE]),
    # a hand-written unbiased variance over a batch of one: 0 / 0 everywhere; a division by zero too
    (dict(phase="forward", op="realdiv", op_family=OpFamily.DIV, value="nan", batch_size=1,
          op_inputs=[zeros(32), zeros(1)]), [CAUSE, "division-by-zero"]),
])
def test_the_rule_names_the_cause_from_the_vocabulary(fields, verdicts):
    report = conclude(NonFiniteReport("torch", 8, **fields))
    assert report.verdicts == verdicts and report.cause == CAUSE, str(report)


def test_the_size_evidence_is_more_specific_than_the_bare_op():
    batch = conclude(NonFiniteReport("torch", 8, "forward", op="std", op_family=OpFamily.STATISTIC, value="nan",
                                     batch_size=1, op_inputs=[stats(32)]))
    axis = conclude(NonFiniteReport("torch", 8, "forward", op="std", op_family=OpFamily.STATISTIC, value="nan",
                                    batch_size=16, op_inputs=[stats(16)]))
    assert "a batch of one sample" in batch.cause_reason and "drop the incomplete last batch" in batch.cause_reason
    assert "a group or an axis of one" in axis.cause_reason


@pytest.mark.parametrize("fields", [
    # a class-balanced loss with a class absent from a batch of 24: x / 0 and 0 / 0 side by side, division-by-zero's
    dict(phase="loss", op="div", op_family=OpFamily.DIV, value="nan", batch_size=24,
         op_inputs=[stats(4, zeros=1), stats(4, zeros=1)]),
    # a division by zero at a batch of one whose numerator is not zero: x / 0 = inf, not a statistic
    dict(phase="forward", op="div", op_family=OpFamily.DIV, value="inf", batch_size=1,
         op_inputs=[stats(4), zeros(1)]),
    # a hand-written masked mean over an empty mask in a larger batch: sum / count = 0 / 0, division-by-zero's
    dict(phase="loss", op="div", op_family=OpFamily.DIV, value="nan", batch_size=8, op_inputs=[zeros(1), zeros(1)]),
    # the backward of a std at a constant input: sqrt-at-zero's
    dict(phase="backward", op="std", op_family=OpFamily.STATISTIC, value="nan", batch_size=32,
         op_inputs=[stats(32, zeros=4)]),
    # a float16 variance of values past 256: the squares overflow, fp16-overflow's
    dict(phase="forward", op="var", op_family=OpFamily.STATISTIC, value="nan", batch_size=32, dtype="float16",
         dtype_max=65504.0, op_inputs=[InputStats("float16", size=64, min=-300.0, max=300.0, max_abs=300.0)]),
])
def test_the_rule_takes_no_other_causes_evidence(fields):
    report = conclude(NonFiniteReport("torch", 8, **fields))
    assert CAUSE not in report.verdicts, str(report)


def test_a_mean_that_is_not_empty_or_a_std_of_nonfinite_inputs_is_not_the_cause():
    mean = conclude(NonFiniteReport("torch", 8, "loss", op="mean", op_family=OpFamily.REDUCE, value="nan",
                                    batch_size=8, op_inputs=[stats(8)]))
    carried = conclude(NonFiniteReport("torch", 8, "forward", op="std", op_family=OpFamily.STATISTIC, value="nan",
                                       batch_size=1, op_inputs=[stats(32, nonfinite=3)]))
    assert CAUSE not in mean.verdicts and CAUSE not in carried.verdicts


# --- the watch on the broken runs --------------------------------------------------------------------------------

def _watch(framework, setting="broken", seed=0):
    cause = nanlab.get_cause(CAUSE)
    seed_everything(seed, framework)
    training = cause.recipe(framework).SETTINGS[setting](seed=seed, device="cpu")
    with pytest.raises(nanlab.NonFiniteError) as raised, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's degrees-of-freedom warning
        with nanlab.watch(training):
            get_framework(framework).loop.train(training, cause.steps)
    return raised.value.report


EXPECTED = {  # (phase, module, op, runner-up)
    "torch": ("forward", "BatchStandardizedMLP", "std", None),
    "tensorflow": ("forward", "standardize", "realdiv", "division-by-zero"),
}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_watch_names_the_cause_of_the_broken_run(framework):
    report = _watch(framework)
    assert report.cause == CAUSE, str(report)
    assert (report.phase, report.module, report.op, report.runner_up) == EXPECTED[framework], str(report)
    assert report.step == NAN_STEP and report.batch_size == 1 and report.samples == [0]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_watch_sees_the_nan_that_nan_to_zero_hides(framework):
    """The loss prints finite; the replay still finds the variance that went NaN before the where / nan_to_num."""
    report = _watch(framework, "nan-to-zero")
    assert report.cause == CAUSE and report.phase == "forward" and report.step == NAN_STEP, str(report)


# --- programs written differently: PyTorch -----------------------------------------------------------------------

def _torch_own_loop(torch, model, x, y, loss_fn, steps=3, lr=0.1):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    with pytest.raises(nanlab.NonFiniteError) as raised, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with nanlab.watch(model, optimizer, loss_fn) as watch:
            for _ in range(steps):
                optimizer.zero_grad()
                watch.loss_fn(model(x), y).backward()
                optimizer.step()
    return raised.value.report


def test_a_group_of_one_in_a_group_relative_advantage_is_named_in_torch(torch):
    """A GRPO-style loss: each reward is standardised within its group (the prompt it answers); the last group has
    one member, whose std is NaN (huggingface/trl#5773). The groups travel in the targets' second column."""

    def advantage_loss(log_prob, target):
        reward, group = target[:, 0], target[:, 1].long()
        advantage = torch.zeros_like(reward)
        for g in group.unique():
            members = reward[group == g]
            advantage[group == g] = (members - members.mean()) / (members.std() + 1e-4)
        return -(advantage * log_prob.squeeze(-1)).mean()

    torch.manual_seed(0)
    x = torch.randn(16, 4)
    groups = torch.tensor([0] * 5 + [1] * 5 + [2] * 5 + [3], dtype=torch.float32)
    report = _torch_own_loop(torch, torch.nn.Linear(4, 1), x, torch.stack([torch.randn(16), groups], dim=1),
                             advantage_loss)
    assert (report.cause, report.phase, report.op, report.op_inputs[0].size) == (CAUSE, "loss", "std", 1), \
        str(report)
    assert "an input of one element" in report.cause_reason and report.verdicts == [CAUSE]


def test_one_generation_per_prompt_is_named_in_torch(torch):
    """The same advantage, vectorised as rewards.view(-1, G) with G = 1 generation per prompt: the std's axis of
    length 1 is not the batch's, so only the op and its finite inputs say so (the located level)."""
    generations = 1

    def advantage_loss(log_prob, reward):
        grouped = reward.view(-1, generations)
        advantage = (grouped - grouped.mean(dim=1, keepdim=True)) / grouped.std(dim=1, keepdim=True)
        return -(advantage.view(-1) * log_prob.squeeze(-1)).mean()

    torch.manual_seed(0)
    report = _torch_own_loop(torch, torch.nn.Linear(4, 1), torch.randn(16, 4), torch.randn(16), advantage_loss)
    assert (report.cause, report.phase, report.op) == (CAUSE, "loss", "std"), str(report)
    assert report.verdicts == [CAUSE]


def test_the_mean_of_an_empty_selection_is_named_in_torch(torch):
    """A loss that averages the rare class's samples on their own: a batch without one is x[mask].mean() of
    nothing."""
    F = torch.nn.functional

    def rare_class_weighted(logits, y):
        per_sample = F.cross_entropy(logits, y, reduction="none")
        return per_sample[y != 3].mean() + per_sample[y == 3].mean()

    torch.manual_seed(0)
    report = _torch_own_loop(torch, torch.nn.Linear(4, 4), torch.randn(8, 4), torch.randint(0, 3, (8,)),
                             rare_class_weighted)
    assert (report.cause, report.phase, report.op, report.op_inputs[0].size) == (CAUSE, "loss", "mean", 0), \
        str(report)
    assert "empty" in report.cause_reason


# --- programs written differently: Keras -------------------------------------------------------------------------

def _keras_fit(keras, model, data, loss, epochs=2):
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        model.fit(data, epochs=epochs, shuffle=False, verbose=0, callbacks=[nanlab.watch(model)])
    return raised.value.report


def test_an_input_standardisation_under_keras_fit_is_named(tf, keras):
    """A regression model that standardises its inputs per batch with the unbiased std written as
    sum(squared_difference) / (n - 1), trained by model.fit over a tf.data pipeline of 2 * 16 + 1 samples."""

    class StandardizedRegressor(keras.Model):
        def __init__(self):
            super().__init__()
            self.out = keras.layers.Dense(1)

        def call(self, x):
            n = tf.cast(tf.shape(x)[0], x.dtype)
            mean = tf.reduce_mean(x, axis=0, keepdims=True)
            variance = tf.reduce_sum(tf.math.squared_difference(x, mean), axis=0) / (n - 1.0)
            return self.out((x - mean) * tf.math.rsqrt(variance + 1e-6))

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(33, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)
    model = StandardizedRegressor()
    model(x[:16])  # a subclassed model builds its weights on a first call
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    report = _keras_fit(keras, model, data, "mse")
    assert (report.cause, report.step, report.phase, report.op, report.batch_size) == (CAUSE, 2, "forward",
                                                                                       "realdiv", 1), str(report)
    assert report.runner_up == "division-by-zero"


def test_the_mean_of_an_empty_selection_is_named_under_keras_fit(tf, keras):
    """A loss that adds the mean loss of the positive samples, taken with boolean_mask; a batch without one is
    reduce_mean of nothing."""

    def with_positives(y_true, y_pred):
        per_sample = keras.losses.binary_crossentropy(y_true, y_pred, from_logits=True)
        positive = tf.boolean_mask(per_sample, tf.reshape(y_true > 0.5, [-1]))
        return tf.reduce_mean(per_sample) + tf.reduce_mean(positive)

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 4)).astype(np.float32)
    y = np.zeros((24, 1), np.float32)
    y[:5] = 1.0  # the positives all sit in the first batch of 8
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    report = _keras_fit(keras, model, tf.data.Dataset.from_tensor_slices((x, y)).batch(8), with_positives)
    assert (report.cause, report.step, report.phase, report.op) == (CAUSE, 1, "loss", "mean"), str(report)
    assert report.op_inputs[0].size == 0
