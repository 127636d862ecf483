"""huge-labels and exploding-rnn-gradients: the label check, the documented CPU exceptions, the regression cousin,
and the RNN gradient norm growing geometrically with sequence length."""
import math
import subprocess
import sys

import numpy as np
import pytest

import nanlab
from nanlab.causes import exploding_rnn_gradients as rnn
from nanlab.causes import huge_labels
from nanlab.evidence import apply_encoding, check_labels, encode_labels, find_bad_labels


# --- the label check (framework-neutral) ---

def test_find_bad_labels_names_out_of_range_negative_fractional_and_nan():
    y = np.array([0, 4, 8000, -1, 2.5, np.nan, 3])
    assert find_bad_labels(y, 5).tolist() == [2, 3, 4, 5]


def test_check_labels_error_names_the_offending_sample_indices():
    y = np.zeros(100, dtype=np.int64)
    y[[7, 42]] = [8000, -1]
    with pytest.raises(nanlab.NanlabError, match=r"2 of 100 labels.*0\.\.4: sample 7 \(label 8000\), 42 \(label -1\)"):
        check_labels(y, 5)


def test_check_labels_returns_int64_for_valid_labels_and_lists_at_most_eight():
    assert check_labels(np.array([0.0, 1.0, 4.0]), 5).dtype == np.int64
    with pytest.raises(nanlab.NanlabError, match="and 4 more"):
        check_labels(np.full(12, 9), 5)


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True])
def test_check_labels_rejects_a_bad_class_count(num_classes):
    with pytest.raises(nanlab.NanlabError, match="num_classes must be a positive integer"):
        check_labels(np.array([0, 1]), num_classes)


def test_encode_labels_round_trips_and_rejects_unseen_labels():
    ids, classes = encode_labels(np.array([8000, 0, 4, 8000]))
    assert ids.tolist() == [2, 0, 1, 2] and classes[ids].tolist() == [8000, 0, 4, 8000]
    assert apply_encoding(np.array([4, 8000]), classes).tolist() == [1, 2]
    with pytest.raises(nanlab.NanlabError, match="not among the training classes"):
        apply_encoding(np.array([3]), classes)


@pytest.mark.parametrize("seed", range(3))
def test_huge_labels_data_has_exactly_one_stray_label_and_the_check_finds_it(seed):
    data = huge_labels.make_data(seed)
    bad = find_bad_labels(data.y_train, huge_labels.NUM_CLASSES)
    assert bad.tolist() == [huge_labels.bad_label_index(seed, len(data.y_train))]
    assert data.y_train[bad[0]] == huge_labels.HUGE_LABEL
    assert huge_labels.drop_bad_labels(data, huge_labels.NUM_CLASSES).y_train.size == data.y_train.size - 1


def test_cause_packages_do_not_import_a_framework():
    code = ("import sys, nanlab.causes.huge_labels, nanlab.evidence, "
            "nanlab.frameworks.torch.cuda_child, nanlab.causes.exploding_rnn_gradients; "
            "print(sorted({'torch', 'tensorflow', 'keras'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- PyTorch ---

def test_torch_cpu_raises_index_error_for_an_out_of_range_target():
    torch = pytest.importorskip("torch")
    with pytest.raises(IndexError, match="Target 8000 is out of bounds"):
        torch.nn.functional.cross_entropy(torch.zeros(2, 5), torch.tensor([0, 8000]))


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_a_run_that_raises_keeps_the_steps_before_the_raise(framework):
    pytest.importorskip("torch" if framework == "torch" else "tensorflow")
    broken = nanlab.reproduce("huge-labels", framework, "cpu", seed=0)
    raised_at = len(broken.losses)
    assert broken.error and raised_at > 0 and all(map(math.isfinite, broken.losses + broken.grad_norms))
    assert nanlab.reproduce("huge-labels", framework, "cpu", seed=0, steps=raised_at).finite
    assert nanlab.reproduce("huge-labels", framework, "cpu", seed=0, steps=raised_at + 1).error == broken.error


def test_torch_huge_labels_broken_records_index_error_and_fixes_learn():
    pytest.importorskip("torch")
    broken = nanlab.reproduce("huge-labels", "torch", "cpu", seed=1)
    assert broken.error == "IndexError" and "8000" in broken.error_message
    for fix_id in nanlab.get_cause("huge-labels").fix_ids:
        run = nanlab.reproduce("huge-labels", "torch", "cpu", seed=1, fix=fix_id)
        assert run.finite and run.learned, run.summary()


def test_torch_cuda_child_reports_a_child_that_did_not_assert():
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU the child really asserts; this checks the parent's handling of other failures")
    from nanlab.frameworks.torch.cuda_child import raise_device_assert_from_child

    with pytest.raises(RuntimeError, match="expected a CUDA device-side assert"):
        raise_device_assert_from_child("nanlab.causes.huge_labels.torch_recipe", seed=0, steps=2)


def _train_regression(recipe, loop, framework, name, seed=0):
    from nanlab.seeding import seed_everything

    seed_everything(seed, framework)
    training = recipe.REGRESSION_SETTINGS[name](seed, "cpu")
    history = loop.train(training, huge_labels.REGRESSION_STEPS)
    score = training.evaluate(training.model) if history.first_nonfinite_step is None else None
    return history, score


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_regression_targets_of_1e10_overflow_and_standardising_fixes_it(framework):
    pytest.importorskip(framework)
    recipe = nanlab.get_cause("huge-labels").recipe(framework)
    from nanlab.frameworks import get_framework

    loop = get_framework(framework).loop
    broken, _ = _train_regression(recipe, loop, framework, "broken")
    assert broken.losses[0] > 1e18 and broken.first_nonfinite_step is not None
    fixed, r_squared = _train_regression(recipe, loop, framework, "standardise-targets")
    assert fixed.first_nonfinite_step is None and fixed.losses[-1] < 0.5 * fixed.losses[0] and r_squared > 0.5


# --- TensorFlow ---

def test_tensorflow_cpu_raises_invalid_argument_for_an_out_of_range_label():
    pytest.importorskip("tensorflow")
    from nanlab.frameworks.tensorflow.loop import keras, tf

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="label value of 8000"):
        loss_fn(np.array([0, 8000]), np.zeros((2, 5), np.float32))


def test_tensorflow_huge_labels_broken_records_invalid_argument_and_fixes_learn():
    pytest.importorskip("tensorflow")
    broken = nanlab.reproduce("huge-labels", "tensorflow", "cpu", seed=1)
    assert broken.error == "InvalidArgumentError"
    for fix_id in nanlab.get_cause("huge-labels").fix_ids:
        run = nanlab.reproduce("huge-labels", "tensorflow", "cpu", seed=1, fix=fix_id)
        assert run.finite and run.learned, run.summary()


# --- exploding RNN gradients ---

def test_recurrent_matrix_has_the_configured_spectral_radius():
    radius = np.max(np.abs(np.linalg.eigvals(rnn.recurrent_matrix())))
    assert math.isclose(radius, rnn.SPECTRAL_RADIUS, rel_tol=1e-6) and radius > 1


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_rnn_gradient_norm_grows_geometrically_with_sequence_length(framework):
    pytest.importorskip(framework)
    recipe = nanlab.get_cause("exploding-rnn-gradients").recipe(framework)
    lengths = [10, 20, 30, 40]
    norms = [recipe.gradient_norm_at_init(length, seed=0) for length in lengths]
    factors = [later / earlier for earlier, later in zip(norms, norms[1:])]
    assert all(factor > 1.25 ** 10 / 2 for factor in factors), norms  # ~x10 per 10 steps, every time
    small = [recipe.gradient_norm_at_init(length, seed=0, spectral_radius=0.9) for length in lengths]
    assert max(small) / min(small) < 10, small


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_rnn_broken_explodes_after_a_huge_first_gradient_and_clipping_learns(framework):
    pytest.importorskip(framework)
    broken = nanlab.reproduce("exploding-rnn-gradients", framework, "cpu", seed=1)
    assert broken.first_nonfinite_step is not None and broken.grad_norms[0] > 100
    assert math.isfinite(broken.losses[0])
    clipped = nanlab.reproduce("exploding-rnn-gradients", framework, "cpu", seed=1, fix="clip-grad-norm")
    assert clipped.finite and clipped.learned, clipped.summary()


# --- symmetric labels ---

def test_symmetric_labels_data_uses_minus_one_and_the_check_names_those_samples():
    from nanlab.causes import symmetric_labels

    data = symmetric_labels.make_data(0)
    assert sorted(set(data.y_train.tolist())) == [-1, 0, 1]
    assert find_bad_labels(data.y_train, 3).tolist() == np.flatnonzero(data.y_train == -1).tolist()
    mapped, classes = symmetric_labels.map_labels(data)
    assert classes.tolist() == [-1, 0, 1] and classes[mapped.y_train].tolist() == data.y_train.tolist()


@pytest.mark.parametrize("framework, error", [("torch", "IndexError"), ("tensorflow", "InvalidArgumentError")])
def test_symmetric_labels_cpu_raises_and_the_wrapping_gather_hides_it(framework, error):
    pytest.importorskip(framework)
    assert nanlab.reproduce("symmetric-labels", framework, "cpu", seed=2).error == error
    hidden = nanlab.reproduce("symmetric-labels", framework, "cpu", seed=2, fix="wrapping-gather")
    assert hidden.finite and hidden.losses[-1] < 0.5 * hidden.losses[0]  # the loss falls ...
    assert hidden.score < 0.75 and not hidden.learned  # ... but class -1 is predicted as 2
    mapped = nanlab.reproduce("symmetric-labels", framework, "cpu", seed=2, fix="map-labels")
    assert mapped.finite and mapped.learned


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_binary_cross_entropy_with_minus_one_targets_runs_to_minus_infinity(framework):
    pytest.importorskip(framework)
    from nanlab.frameworks import get_framework
    from nanlab.seeding import seed_everything

    recipe = nanlab.get_cause("symmetric-labels").recipe(framework)
    seed_everything(0, framework)
    history = get_framework(framework).loop.train(recipe.binary_minus_one(0, "cpu"), 600)
    finite = [loss for loss in history.losses if math.isfinite(loss)]
    assert min(finite) < -1e20  # unbounded below: the loss keeps falling past any bound ...
    assert history.first_nonfinite_step is not None and history.losses[-1] == -math.inf  # ... until float32 ends


# --- fold-ins: Adam on 1e10 targets, out-of-range labels under XLA, clip by value vs by norm over seeds ---

@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_adam_on_1e10_targets_stays_finite_and_never_learns(framework):
    pytest.importorskip(framework)
    from nanlab.frameworks import get_framework
    from nanlab.seeding import seed_everything

    recipe = nanlab.get_cause("huge-labels").recipe(framework)
    seed_everything(0, framework)
    training = recipe.REGRESSION_SETTINGS["adam"](0, "cpu")
    history = get_framework(framework).loop.train(training, huge_labels.ADAM_STEPS)
    assert history.first_nonfinite_step is None and len(history.losses) == huge_labels.ADAM_STEPS
    assert min(history.losses) > 1e18  # every step of the record, not only the last
    assert training.evaluate(training.model) < 0.05  # held-out R²: no better than predicting the mean


@pytest.mark.parametrize("cause_id", ["huge-labels", "symmetric-labels"])
def test_tensorflow_out_of_range_labels_give_nan_under_xla_where_eager_raises(cause_id):
    pytest.importorskip("tensorflow")
    import importlib

    from nanlab.data import minibatch_indices
    from nanlab.frameworks.tensorflow.loop import train
    from nanlab.seeding import seed_everything

    cause = nanlab.get_cause(cause_id)
    package = importlib.import_module(cause.package)
    seed_everything(0, "tensorflow")
    history = train(cause.recipe("tensorflow").broken_under_xla(0, "cpu"), cause.steps)  # XLA does not check
    assert history.first_nonfinite_step is not None and math.isnan(history.losses[-1])
    assert all(math.isfinite(loss) for loss in history.losses[:-1])
    labels = package.make_data(0).y_train
    bad = find_bad_labels(labels, package.NUM_CLASSES)
    first_bad_step = next(step for step, rows in enumerate(minibatch_indices(len(labels), package.BATCH_SIZE, 0))
                          if np.isin(rows, bad).any())
    assert history.first_nonfinite_step == first_bad_step  # NaN exactly at the first batch holding a bad label


def _rnn_outcomes(framework, setting, seeds):
    from nanlab.frameworks import get_framework
    from nanlab.seeding import seed_everything

    cause = nanlab.get_cause("exploding-rnn-gradients")
    outcomes = []
    for seed in seeds:
        seed_everything(seed, framework)
        training = setting(seed, "cpu")
        history = get_framework(framework).loop.train(training, cause.steps)
        score = training.evaluate(training.model) if history.first_nonfinite_step is None else None
        outcomes.append((history.first_nonfinite_step, cause.judge_learning(history.losses, score)))
    return outcomes


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_clip_by_value_keeps_runs_finite_but_learns_on_fewer_seeds_than_clip_by_norm(framework):
    pytest.importorskip(framework)
    recipe = nanlab.get_cause("exploding-rnn-gradients").recipe(framework)
    seeds = range(5)  # the notebooks' COMPARISON_SEEDS
    by_norm = _rnn_outcomes(framework, recipe.clip_grad_norm, seeds)
    by_value = _rnn_outcomes(framework, recipe.clip_grad_value, seeds)
    assert all(step is None for step, _ in by_norm + by_value)  # both clips bound every step
    assert all(learned for _, learned in by_norm)
    assert sum(learned for _, learned in by_value) < len(seeds)


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_rnn_small_initialisation_alone_does_not_learn(framework):
    pytest.importorskip(framework)
    recipe = nanlab.get_cause("exploding-rnn-gradients").recipe(framework)
    if framework == "torch":
        def small_init(seed, device):
            return recipe.build_training(recipe.vanilla_rnn(0.9), seed, device)
    else:
        from nanlab.frameworks.tensorflow.loop import keras

        def small_init(seed, device):
            return recipe.build_training(recipe.CompiledForward(recipe.vanilla_rnn(spectral_radius=0.9)), seed,
                                         keras.optimizers.SGD(learning_rate=rnn.LR))
    outcomes = _rnn_outcomes(framework, small_init, range(5))
    assert not any(learned for _, learned in outcomes)
    assert sum(step is not None for step, _ in outcomes) >= 3  # most go non-finite: training moves W past 1


def test_rnn_overflow_length_predicted_from_long_sequences_brackets_the_measured_overflow():
    pytest.importorskip("torch")
    recipe = nanlab.get_cause("exploding-rnn-gradients").recipe("torch")
    float32_max = float(np.finfo(np.float32).max)

    def predicted(lengths):
        slope, intercept = np.polyfit(lengths, np.log([recipe.gradient_norm_at_init(n) for n in lengths]), 1)
        return (math.log(float32_max) - intercept) / slope

    late, early = predicted([100, 150, 200]), predicted([40, 50, 60])
    assert early < late  # the per-step factor drifts down towards 1.25 with length, so short fits predict early
    assert math.isfinite(recipe.gradient_norm_at_init(int(late) - 25))
    assert not math.isfinite(recipe.gradient_norm_at_init(int(late) + 25))


def test_keras_recipe_models_name_their_layers():
    pytest.importorskip("tensorflow")
    import re

    for cause_id in ("huge-labels", "symmetric-labels", "exploding-rnn-gradients"):
        recipe = nanlab.get_cause(cause_id).recipe("tensorflow")
        for name in ("broken", *nanlab.get_cause(cause_id).fix_ids):
            model = recipe.SETTINGS[name](0, "cpu").model
            paths = [variable.path for variable in model.trainable_variables]
            assert not [p for p in paths if re.search(r"(^|/)(dense|sequential|simple_rnn|gru)_\d+/", p)], paths


def test_tensorflow_gradient_norms_at_init_compiled_once_match_the_eager_ones():
    """The notebook's compiled sweep over sequence lengths gives the eager per-length norms, past overflow too."""
    pytest.importorskip("tensorflow")
    recipe = nanlab.get_cause("exploding-rnn-gradients").recipe("tensorflow")
    lengths = [10, 60, 400]
    compiled = recipe.gradient_norms_at_init(lengths, seed=0)
    eager = [recipe.gradient_norm_at_init(length, seed=0) for length in lengths]
    for fast, slow in zip(compiled, eager):
        assert (math.isnan(fast) and math.isnan(slow)) or fast == pytest.approx(slow, rel=1e-5), (compiled, eager)
    assert math.isfinite(compiled[0]) and compiled[1] > 10 * compiled[0]
