"""dirty-data and unnormalised-inputs: the recipes match their causes, the numbers the notebooks rest on hold in both
frameworks, and each rule names its cause on its own broken run and on a variant written differently."""
import math

import numpy as np
import pytest

import nanlab
from nanlab.causes import dirty_data, unnormalised_inputs
from nanlab.report import NonFiniteReport
from nanlab.watching.conclude import conclude
from nanlab.watching.vocabulary import OpFamily
from nanlab.seeding import seed_everything

FRAMEWORKS = ("torch", "tensorflow")
CAUSES = ("dirty-data", "unnormalised-inputs")


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("cause", CAUSES)
def test_recipe_settings_are_the_broken_setting_and_the_fixes(cause, framework):
    assert list(nanlab.get_cause(cause).recipe(framework).SETTINGS) == ["broken", *nanlab.get_cause(cause).fix_ids]


def test_the_wrong_fixes_are_marked():
    wrong = {cause: [(fix.id, fix.still_nonfinite) for fix in nanlab.get_cause(cause).fixes if fix.hides_problem]
             for cause in CAUSES}
    assert wrong == {"dirty-data": [("nan-to-num-loss", True)], "unnormalised-inputs": [("lower-lr", False)]}


# --- dirty data -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(10))
def test_two_corrupt_records_and_scan_finds_exactly_them(seed):
    data = dirty_data.make_data(seed)
    found = nanlab.scan(data.x_train, progress=False).nonfinite_samples
    assert sorted(found) == sorted(dirty_data.corrupt_records(seed, len(data.x_train)))
    for cleaned in (dirty_data.drop_corrupt_records(data), dirty_data.impute_corrupt_values(data)):
        assert np.isfinite(cleaned.x_train).all()
    assert len(dirty_data.drop_corrupt_records(data).x_train) == len(data.x_train) - 2


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_broken_run_goes_nan_at_the_first_batch_holding_a_corrupt_record(framework):
    """Training is healthy until the first batch with a corrupt record, and goes non-finite exactly there."""
    from nanlab.data import minibatch_indices

    cause = nanlab.get_cause("dirty-data")
    for seed in range(3):
        data = dirty_data.make_data(seed)
        corrupt = set(dirty_data.corrupt_records(seed, len(data.x_train)))
        batches = minibatch_indices(len(data.x_train), dirty_data.BATCH_SIZE, seed)
        first_bad_batch = next(step for step, index in enumerate(batches) if corrupt & set(index.tolist()))
        run = nanlab.reproduce(cause, framework, "cpu", seed=seed)
        assert run.first_nonfinite_step == first_bad_batch
        assert all(math.isfinite(loss) for loss in run.losses[:first_bad_batch])


def test_nan_to_num_on_the_loss_prints_a_finite_loss_while_the_gradient_is_nan(torch):
    run = nanlab.reproduce("dirty-data", "torch", "cpu", seed=0, fix="nan-to-num-loss")
    step = run.first_nonfinite_step
    assert step == nanlab.reproduce("dirty-data", "torch", "cpu", seed=0).first_nonfinite_step
    assert run.losses[step] == 0.0 and math.isnan(run.grad_norms[step])


def test_tensorflow_where_on_the_loss_keeps_the_gradient_nan(tf):
    run = nanlab.reproduce("dirty-data", "tensorflow", "cpu", seed=0, fix="nan-to-num-loss")
    step = run.first_nonfinite_step
    assert step is not None and run.losses[step] == 0.0 and math.isnan(run.grad_norms[step])


def test_numpy_nan_to_num_turns_inf_into_the_largest_float32():
    """The TF write-up's np.nan_to_num(X) repairs NaN with 0 but Inf with 3.4e38, one multiply from overflow."""
    repaired = np.nan_to_num(np.array([np.nan, np.inf], dtype=np.float32))
    assert repaired[0] == 0.0 and repaired[1] == np.finfo(np.float32).max
    with np.errstate(over="ignore"):
        assert np.isinf(repaired[1] * np.float32(2.0))


def test_the_dirty_data_rule_needs_a_data_phase_without_a_label_problem():
    dirty = conclude(NonFiniteReport("torch", 3, "data", samples=[5], data_findings=["non-finite values in samples 5"]))
    assert dirty.cause == "dirty-data"
    labels = conclude(NonFiniteReport("torch", 0, "data", samples=[2], label_problem="labels outside 0..4 (label 8000 "
                                      "at sample 2)", data_findings=["labels outside 0..4"]))
    assert labels.cause != "dirty-data"
    forward = conclude(NonFiniteReport("torch", 3, "forward", module="0", op="linear", op_family=OpFamily.MATMUL,
                                       samples=[5]))
    assert forward.cause != "dirty-data"


def _watch_torch(training, steps):
    from nanlab.frameworks.torch import loop

    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training):
            loop.train(training, steps)
    return raised.value.report


def _watch_keras(training, steps):
    from nanlab.frameworks.tensorflow import loop

    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training):
            loop.train(training, steps)
    return raised.value.report


def test_torch_watch_names_dirty_data_on_the_broken_run(torch):
    seed_everything(0, "torch")
    cause = nanlab.get_cause("dirty-data")
    report = _watch_torch(cause.recipe("torch").SETTINGS["broken"](seed=0, device="cpu"), cause.steps)
    data = dirty_data.make_data(0)
    assert report.cause == "dirty-data" and report.phase == "data", str(report)
    assert report.step == nanlab.reproduce(cause, "torch", "cpu", seed=0).first_nonfinite_step
    assert len(report.samples) >= 1 and report.samples[0] < dirty_data.BATCH_SIZE
    assert data.x_train.shape[1] == dirty_data.NUM_FEATURES


def test_torch_watch_names_dirty_data_on_a_regressor_with_a_nan_target_in_its_own_loop(torch):
    """Another model (a 1-D convolution), other data (a NaN in a regression target), the user's own loop."""
    from torch import nn
    from torch.nn import functional as F

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 1))
    x, y = torch.randn(8, 1, 8), torch.randn(8, 1)
    y[5, 0] = float("nan")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.mse_loss) as watch:
            optimizer.zero_grad()
            watch.loss_fn(model(x), y).backward()
            optimizer.step()
    report = raised.value.report
    assert (report.cause, report.phase, report.samples) == ("dirty-data", "data", [5]), str(report)


def test_keras_watch_names_dirty_data_on_the_broken_run(tf):
    seed_everything(0, "tensorflow")
    cause = nanlab.get_cause("dirty-data")
    report = _watch_keras(cause.recipe("tensorflow").SETTINGS["broken"](seed=0, device="cpu"), cause.steps)
    assert report.cause == "dirty-data" and report.phase == "data", str(report)
    assert report.step == nanlab.reproduce(cause, "tensorflow", "cpu", seed=0).first_nonfinite_step


def test_keras_watch_names_dirty_data_in_fit_on_images_with_an_inf_pixel(tf):
    """Another model (a small CNN), other data (8x8 images, one Inf pixel), Keras' own model.fit."""
    from nanlab.frameworks.tensorflow.loop import keras

    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype(np.float32)
    images[11, 3, 4, 0] = np.inf
    labels = np.arange(16) % 3
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(nanlab.NonFiniteError) as raised:
        model.fit(images, labels, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[nanlab.watch(model)])
    report = raised.value.report
    assert (report.cause, report.phase, report.samples) == ("dirty-data", "data", [11]), str(report)


# --- unnormalised inputs --------------------------------------------------------------------------------------------

def test_raw_pixels_make_the_squared_error_curvature_tens_of_thousands_of_times_larger():
    """The largest eigenvalue of 2 E[x x^T] (the Hessian of linear least squares) for raw vs scaled pixels."""
    data = unnormalised_inputs.make_data(0)
    raw = np.linalg.eigvalsh(2 * data.x_train.T.astype(np.float64) @ data.x_train / len(data.x_train)).max()
    unit = np.linalg.eigvalsh(2 * (data.x_train / 255.0).T.astype(np.float64) @ (data.x_train / 255.0)
                              / len(data.x_train)).max()
    assert raw / unit == pytest.approx(255.0 ** 2, rel=1e-6)
    assert 2 / raw < unnormalised_inputs.LOW_LR * 10 and unnormalised_inputs.LOW_LR < 2 / raw < unnormalised_inputs.LR


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_unnormalised_broken_run_grows_by_orders_of_magnitude_per_step_then_overflows(framework):
    run = nanlab.reproduce("unnormalised-inputs", framework, "cpu", seed=0)
    assert run.first_nonfinite_step is not None and run.first_nonfinite_step <= 5
    finite = [loss for loss in run.losses if math.isfinite(loss)]
    assert all(later > 100 * earlier for earlier, later in zip(finite[1:], finite[2:]))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_lowered_rate_stays_finite_but_predicts_worse_than_the_mean(framework):
    run = nanlab.reproduce("unnormalised-inputs", framework, "cpu", seed=0, fix="lower-lr")
    scaled = nanlab.reproduce("unnormalised-inputs", framework, "cpu", seed=0, fix="scale-to-unit")
    assert run.finite and run.score < 0.0 < 0.9 < scaled.score
    assert run.losses[-1] < 0.5 * run.losses[0], "the loss falls a lot, so the loss alone looks like learning"


def test_the_unnormalised_rule_reads_the_input_scale():
    growing = [1.0, 30.0, 900.0, 3e4]
    raw = conclude(NonFiniteReport("torch", 4, "loss", module="loss", op="mse_loss", op_family=OpFamily.REDUCE,
                                   grad_norms=growing, input_max_abs=255.0))
    assert raw.cause == "unnormalised-inputs", str(raw)
    assert raw.runner_up is None, "a located cause outranks the bare trend"
    scaled = conclude(NonFiniteReport("torch", 4, "loss", module="loss", op="mse_loss", op_family=OpFamily.REDUCE,
                                      grad_norms=growing, input_max_abs=1.0))
    assert scaled.cause == "high-learning-rate"
    half = conclude(NonFiniteReport("torch", 4, "forward", op="linear", op_family=OpFamily.MATMUL,
                                    grad_norms=growing, input_max_abs=255.0, dtype="float16", dtype_max=65504.0))
    assert half.cause != "unnormalised-inputs"
    data = conclude(NonFiniteReport("torch", 4, "data", samples=[1], input_max_abs=255.0))
    assert data.cause == "dirty-data"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_watch_names_unnormalised_inputs_on_the_broken_run(framework):
    cause = nanlab.get_cause("unnormalised-inputs")
    seed_everything(0, framework)
    training = cause.recipe(framework).SETTINGS["broken"](seed=0, device="cpu")
    report = (_watch_torch if framework == "torch" else _watch_keras)(training, cause.steps)
    assert report.input_max_abs == 255.0
    assert report.cause == "unnormalised-inputs", str(report)


def test_the_torch_watch_names_unnormalised_inputs_on_raw_house_prices_in_its_own_loop(torch):
    """Another model (two outputs), other data (raw-unit features: square metres and prices), its own loop."""
    from torch import nn
    from torch.nn import functional as F

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    area = rng.uniform(30, 250, size=(64, 1))
    x = torch.tensor(np.hstack([area, area * 3000 + rng.normal(0, 1e4, size=(64, 1))]), dtype=torch.float32)
    y = torch.randn(64, 2)
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.mse_loss) as watch:
            for _ in range(20):
                optimizer.zero_grad()
                watch.loss_fn(model(x), y).backward()
                optimizer.step()
    assert raised.value.report.cause == "unnormalised-inputs", str(raised.value.report)
