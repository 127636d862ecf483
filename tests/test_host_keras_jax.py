"""nanlab.watch(model) for Keras 3 on the JAX backend, tested the way a Keras user trains: a compiled model,
model.fit(x, y, callbacks=[nanlab.watch(model)]).

The JAX scenarios run in their own Python process (tests/keras_backend_script.py: KERAS_BACKEND must be set before
Keras is imported, and this test process has Keras on TensorFlow), which prints what it saw as JSON; the
TensorFlow-backend check runs in another. The NaN: log(0) from a probability that underflows, at step 2.
"""
import importlib
import importlib.util
import sys

import pytest

import nanlab
from tests.keras_backend_script import result, run_script

JAX_SCENARIOS = '''
keras.utils.set_random_seed(0)


def scenario_raise():
    x, y = make_data(huge_rows=BAD)
    model, batches = make_model(), Batches()
    optimizer = model.optimizer
    watch = nanlab.watch(model)
    try:
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[batches, watch])
    except nanlab.NonFiniteError as error:
        weights = model.get_weights()
        return dict(summary(error.report), raised=True, finite=finite(weights), unchanged=same(weights, batches.before),
                    batches=batches.count, iterations=int(model.optimizer.iterations), kind=type(watch).__module__,
                    callback=isinstance(watch, keras.callbacks.Callback), given_back=model.optimizer is optimizer,
                    same_report=error.report is watch.report)
    return dict(raised=False)


def scenario_stop():
    x, y = make_data(huge_rows=BAD)
    model, batches = make_model(), Batches()
    watch = nanlab.watch(model, on_nonfinite="stop")
    history = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0, callbacks=[batches, watch])
    weights = model.get_weights()
    return dict(summary(watch.report), stopped=watch.stopped, stop_training=model.stop_training,
                batches=batches.count, epochs=len(history.history["loss"]), unchanged=same(weights, batches.before),
                finite=finite(weights), iterations=int(model.optimizer.iterations),
                skipped=watch.history.skipped_steps)


def scenario_skip():
    x, y = make_data(huge_rows=BAD)
    model, batches = make_model(optimizer=keras.optimizers.Adam(0.01)), Batches()
    watch = nanlab.watch(model, on_nonfinite="skip")
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[batches, watch])
    return dict(summary(watch.report), skipped=watch.history.skipped_steps, batches=batches.count,
                finite=finite(model.get_weights() + [ops.convert_to_numpy(v) for v in model.optimizer.variables]),
                iterations=int(model.optimizer.iterations), losses=watch.history.losses,
                grad_norms=watch.history.grad_norms, steps=watch.step)


def scenario_healthy():
    x, y = make_data()
    runs = []
    for watched in (False, True):
        keras.utils.set_random_seed(0)
        model = make_model(dropout=0.25, optimizer=keras.optimizers.Adam(0.01))
        callbacks = [nanlab.watch(model)] if watched else []
        history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
        runs.append((model.get_weights(), history.history["loss"], callbacks, model))
    (plain, plain_loss, _, _), (watched, watched_loss, (watch,), model) = runs
    again = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history["loss"]
    return dict(identical=same(plain, watched), losses=[plain_loss, watched_loss], steps=watch.step,
                report=watch.report is None, history=[len(watch.history.losses), len(watch.history.grad_norms)],
                optimizer=type(model.optimizer).__name__, finite_again=bool(np.isfinite(again).all()))


def scenario_a_non_finite_loss_with_finite_gradients_is_not_applied():
    def nll_plus_log_zero(y_true, log_probs):  # + log(0): -inf that no weight affects, so its gradients are finite
        return nll(y_true, log_probs) + ops.log(ops.sum(ops.cast(y_true, "float32")) * 0.0)

    model = make_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=nll_plus_log_zero)
    initial = model.get_weights()
    try:
        model.fit(*make_data(), batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[nanlab.watch(model)])
    except nanlab.NonFiniteError as error:
        return dict(summary(error.report), unchanged=same(model.get_weights(), initial),
                    iterations=int(model.optimizer.iterations))
    return dict(raised=False)


class SqrtAtZero(layers.Layer):
    """z + sqrt(0 * relu(z)): the value is z, finite; the gradient of sqrt at 0 times 0 is NaN."""

    def call(self, z):
        return z + ops.sqrt(ops.relu(z) * 0.0)


def scenario_a_finite_loss_with_nan_gradients():
    model = keras.Sequential([
        keras.Input((4,)),
        layers.Dense(8, activation="relu", name="hidden", kernel_initializer=keras.initializers.GlorotUniform(seed=1)),
        layers.Dense(3, name="logits", kernel_initializer=keras.initializers.GlorotUniform(seed=3)),
        SqrtAtZero(name="sqrt_at_zero"), LogSoftmax(name="log_probs"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=nll)
    initial = model.get_weights()
    watch = nanlab.watch(model, on_nonfinite="stop")
    model.fit(*make_data(), batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[watch])
    return dict(summary(watch.report), unchanged=same(model.get_weights(), initial),
                iterations=int(model.optimizer.iterations))


def scenario_a_nan_input_through_batchnorm_under_skip():
    x, y = make_data()
    x[20] = np.nan  # batch 1
    model = keras.Sequential([keras.Input((4,)), layers.BatchNormalization(name="norm"), layers.Dense(3, name="logits"),
                              LogSoftmax(name="log_probs")])
    model.compile(optimizer="adam", loss=nll)
    watch = nanlab.watch(model, on_nonfinite="skip")
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[watch])
    return dict(summary(watch.report), skipped=watch.history.skipped_steps,
                trainable_finite=finite([ops.convert_to_numpy(v) for v in model.trainable_variables]))


def scenario_with_form_is_refused():
    model = make_model()
    try:
        with nanlab.watch(model):
            model.fit(*make_data(), batch_size=16, epochs=1, verbose=0)
    except nanlab.NanlabError as error:
        return dict(message=str(error))
    return dict(message=None)


def scenario_a_hand_written_loop_is_refused():
    model = make_model()
    try:
        nanlab.watch(model, model.optimizer, nll)
    except nanlab.NanlabError as error:
        return dict(message=str(error))
    return dict(message=None)
'''

TENSORFLOW_SCENARIOS = '''
def scenario_tensorflow_backend():
    model = make_model()
    watch = nanlab.watch(model)
    return dict(kind=type(watch).__module__, backend=keras.backend.backend(),
                adapter_imported="nanlab.frameworks.tensorflow.hosts.keras_jax" in sys.modules)
'''


def needs(*modules: str) -> None:
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


@pytest.fixture(scope="module")
def on_jax():
    needs("jax", "keras")
    return run_script("jax", JAX_SCENARIOS)


def test_fit_raises_at_the_bad_step_with_the_weights_it_began_with(on_jax):
    outcome = result(on_jax, "raise")
    assert outcome["raised"], "fit trained through the NaN"
    assert outcome["kind"] == "nanlab.frameworks.tensorflow.hosts.keras_jax" and outcome["callback"]
    assert outcome["step"] == 2 and outcome["batches"] == 3
    assert outcome["phase"] in ("loss", "backward")
    assert outcome["finite"] and outcome["unchanged"], "the weights are those the bad step began with"
    assert outcome["iterations"] == 2, "the bad step's update was not applied"
    assert outcome["given_back"], "the model has its own optimizer again"
    assert outcome["same_report"]


def test_the_report_says_what_it_could_not_localise_and_how_to(on_jax):
    outcome = result(on_jax, "raise")
    assert outcome["module"] is None and outcome["op"] is None and outcome["samples"] == []
    text = outcome["text"]
    assert text.startswith("Step 2: ") and "unlocated op" in text
    assert "the layer, the op and the samples were not localised" in text
    assert "KERAS_BACKEND=torch" in text
    assert outcome["losses"] == 2 and outcome["grad_norms"] == 2, "the two healthy steps before it"


def test_stop_ends_fit_after_the_bad_batch_without_its_update(on_jax):
    outcome = result(on_jax, "stop")
    assert outcome["stopped"] and outcome["stop_training"]
    assert (outcome["batches"], outcome["epochs"]) == (3, 1), "fit ended after the bad batch"
    assert outcome["unchanged"] and outcome["finite"]
    assert outcome["iterations"] == 2 and outcome["skipped"] == [2]
    assert outcome["step"] == 2 and "not localised" in outcome["text"]


def test_skip_drops_the_bad_update_and_trains_on(on_jax):
    outcome = result(on_jax, "skip")
    assert outcome["batches"] == 4 and outcome["skipped"] == [2] and outcome["steps"] == 4
    assert outcome["iterations"] == 3, "three updates applied, the bad one dropped"
    assert outcome["finite"], "weights and Adam's moments stayed finite"
    assert len(outcome["losses"]) == 3 and len(outcome["grad_norms"]) == 3, "the history holds the healthy steps"
    assert all(norm > 0 for norm in outcome["grad_norms"])


def test_a_non_finite_loss_is_not_applied_even_when_its_gradients_are_finite(on_jax):
    outcome = result(on_jax, "a_non_finite_loss_with_finite_gradients_is_not_applied")
    assert (outcome["step"], outcome["phase"], outcome["value"]) == (0, "loss", "-inf")
    assert outcome["unchanged"] and outcome["iterations"] == 0


def test_a_finite_loss_with_nan_gradients_names_the_weights_nearest_the_output(on_jax):
    outcome = result(on_jax, "a_finite_loss_with_nan_gradients")
    assert (outcome["step"], outcome["phase"], outcome["parameter"]) == (0, "backward", "logits/bias")
    assert "Non-finite gradients: hidden/kernel, hidden/bias, logits/kernel, logits/bias" in outcome["note"]
    assert outcome["text"].startswith("Step 0: the backward pass went non-finite at an unlocated op, and "
                                      "`logits/bias` was the first parameter")
    assert outcome["unchanged"] and outcome["iterations"] == 0


def test_skip_says_when_the_bad_forward_pass_spoiled_non_trainable_state(on_jax):
    outcome = result(on_jax, "a_nan_input_through_batchnorm_under_skip")
    assert outcome["skipped"] == [1] and outcome["trainable_finite"]
    assert "left non-trainable state non-finite (norm/moving_mean, norm/moving_variance)" in outcome["note"]


def test_a_healthy_fit_is_bit_identical_with_and_without_the_watch(on_jax):
    outcome = result(on_jax, "healthy")
    assert outcome["identical"], "weights differ"
    plain, watched = outcome["losses"]
    assert plain == watched
    assert outcome["report"] and outcome["steps"] == 8 and outcome["history"] == [8, 8]
    assert outcome["optimizer"] == "Adam" and outcome["finite_again"], "a later fit without the watch is plain"


def test_the_with_form_and_a_hand_written_loop_are_refused_in_one_line(on_jax):
    for name, expected in (("with_form_is_refused", "callbacks=[nanlab.watch(model)]"),
                           ("a_hand_written_loop_is_refused", "pass the model alone")):
        message = result(on_jax, name)["message"]
        assert message and expected in message and "\n" not in message


def test_the_tensorflow_backend_still_gets_the_tensorflow_watch():
    needs("tensorflow", "keras")
    outcome = result(run_script("tensorflow", TENSORFLOW_SCENARIOS), "tensorflow_backend")
    assert outcome["backend"] == "tensorflow" and outcome["kind"] == "nanlab.frameworks.tensorflow.watch"
    assert not outcome["adapter_imported"], "recognising a Keras model on TensorFlow loaded the JAX adapter"


def test_without_jax_the_host_says_what_to_install(monkeypatch):
    monkeypatch.delitem(sys.modules, "nanlab.frameworks.tensorflow.hosts.keras_jax", raising=False)
    monkeypatch.setitem(sys.modules, "jax", None)
    with pytest.raises(nanlab.NanlabError, match=r"^JAX is not installed; install it with: pip install "
                                                 r"'nanlab\[integrations\]'$"):
        importlib.import_module("nanlab.frameworks.tensorflow.hosts.keras_jax")
