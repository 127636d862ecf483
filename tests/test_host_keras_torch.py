"""nanlab.watch(model) for Keras 3 on the torch backend, tested the way a Keras user trains: a compiled model,
model.fit(x, y, callbacks=[nanlab.watch(model)]).

Each backend runs in its own Python process (tests/keras_backend_script.py: KERAS_BACKEND must be set before Keras
is imported, and this test process has Keras on TensorFlow): the scenarios below are functions of one script, run
once per backend, which prints what it saw as JSON. The NaN: log(0) from a probability that underflows, at step 2.
"""
import importlib.util

import pytest

from tests.keras_backend_script import result, run_script

# Neither is imported here (Keras would load TensorFlow into this process): the scripts import them.
if importlib.util.find_spec("torch") is None or importlib.util.find_spec("keras") is None:
    pytest.skip("needs torch and keras", allow_module_level=True)

TORCH_SCENARIOS = '''
def scenario_raise():
    x, y = make_data(huge_rows=BAD)
    model, batches = make_model(), Batches()
    try:
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[batches, nanlab.watch(model)])
    except nanlab.NonFiniteError as error:
        weights = model.get_weights()
        return dict(summary(error.report), raised=True, finite=finite(weights), unchanged=same(weights, batches.before),
                    batches=batches.count, text=str(error.report),
                    detached="compute_loss" not in vars(model) and "apply" not in vars(model.optimizer))
    return dict(raised=False)


def scenario_stop():
    x, y = make_data(huge_rows=BAD)
    model, batches = make_model(), Batches()
    watch = nanlab.watch(model, on_nonfinite="stop")
    history = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0, callbacks=[batches, watch])
    weights = model.get_weights()
    return dict(summary(watch.report), stopped=watch.stopped, stop_training=model.stop_training,
                batches=batches.count, epochs=len(history.history["loss"]), unchanged=same(weights, batches.before),
                finite=finite(weights), iterations=int(model.optimizer.iterations.numpy()))


def scenario_skip():
    x, y = make_data(huge_rows=BAD)
    model, batches = make_model(), Batches()
    watch = nanlab.watch(model, on_nonfinite="skip")
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[batches, watch])
    return dict(summary(watch.report), skipped=watch.history.skipped_steps, batches=batches.count,
                finite=finite(model.get_weights()), iterations=int(model.optimizer.iterations.numpy()))


def scenario_healthy():
    x, y = make_data()
    runs = []
    for watched in (False, True):
        model = make_model(dropout=0.25)
        callbacks = [nanlab.watch(model)] if watched else []
        history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
        runs.append((model.get_weights(), history.history["loss"], callbacks))
    (plain, plain_loss, _), (watched, watched_loss, (watch,)) = runs
    return dict(identical=same(plain, watched) and len(plain) == len(watched), losses=[plain_loss, watched_loss],
                steps=watch.step, report=watch.report is None, history=len(watch.history.losses))


class LogOfDropped(layers.Layer):
    """log of a dropout's output: a unit the dropout zeroed gives -inf, in rows that depend on its mask."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.drop = layers.Dropout(0.1, seed=7)
        self.zeroed_rows = []  # per training call: the rows where the dropout zeroed a unit

    def call(self, h, training=None):
        dropped = self.drop(ops.softplus(h), training=training)
        if training:
            self.zeroed_rows.append(np.flatnonzero(ops.convert_to_numpy(ops.any(dropped == 0, axis=1))).tolist())
        return ops.log(dropped)


def scenario_dropout_replayed_with_the_same_mask():
    x, y = make_data()
    layer = LogOfDropped(name="log_dropped")
    model = keras.Sequential([keras.Input((4,)), layers.Dense(3, name="dense",
                              kernel_initializer=keras.initializers.GlorotUniform(seed=1)), layer])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=nll)
    try:
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[nanlab.watch(model)])
    except nanlab.NonFiniteError as error:
        first = next(i for i, rows in enumerate(layer.zeroed_rows) if rows)
        return dict(summary(error.report), zeroed=layer.zeroed_rows[first], first_bad_call=first,
                    replays_saw=layer.zeroed_rows[first + 1:])
    return dict(raised=False)


def scenario_with_block():
    x, y = make_data(huge_rows=BAD)
    model = make_model()
    try:
        with nanlab.watch(model):
            model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    except nanlab.NonFiniteError as error:
        return summary(error.report)
    return dict(raised=False)


class Head(layers.Layer):
    """A layer holding layers: its own log-probabilities layer is named block/log_probs."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.logits = layers.Dense(3, name="logits", kernel_initializer=keras.initializers.GlorotUniform(seed=3))
        self.log_probs = LogSoftmax(name="log_probs")

    def call(self, h):
        return self.log_probs(self.logits(h))


class Classifier(keras.Model):
    def __init__(self):
        super().__init__(name="classifier")
        self.hidden = layers.Dense(8, name="hidden", kernel_initializer=keras.initializers.GlorotUniform(seed=1))
        self.head = Head(name="block")

    def call(self, x):
        return self.head(ops.relu(self.hidden(x)))


def scenario_subclassed_model_names_nested_layers():
    x, y = make_data(huge_rows=BAD)
    model = Classifier()
    model.compile(optimizer="adam", loss=nll)
    try:
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[nanlab.watch(model)])
    except nanlab.NonFiniteError as error:
        return summary(error.report)
    return dict(raised=False)


def scenario_torch_loop_gets_the_torch_watch():
    import torch

    model = make_model()
    watch = nanlab.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), nll)
    return dict(kind=type(watch).__module__ + "." + type(watch).__name__)
'''

# The two Keras behaviours the adapter relies on, each taken away as a release might: fit's optimizer.apply no
# longer called through the instance (so it cannot be watched there), Layer._flatten_layers gone.
PRIVATE_SCENARIOS = '''
import nanlab.frameworks.torch.hosts.keras as adapter


def scenario_apply_not_hooked():
    real_hook = adapter.hook
    adapter.hook = lambda owner, name, fn: None if name == "apply" else real_hook(owner, name, fn)
    x, y = make_data(huge_rows=BAD)
    model, batches = make_model(), Batches()
    try:
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[batches, nanlab.watch(model)])
    except nanlab.NonFiniteError as error:
        return dict(summary(error.report), batches=batches.count)
    finally:
        adapter.hook = real_hook
    return dict(raised=False)


def scenario_compute_loss_not_hooked():
    real_hook = adapter.hook
    adapter.hook = lambda owner, name, fn: None if name == "compute_loss" else real_hook(owner, name, fn)
    x, y = make_data(huge_rows=BAD)
    model, batches = make_model(), Batches()
    try:
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[batches, nanlab.watch(model)])
    except nanlab.NonFiniteError as error:
        return dict(summary(error.report), batches=batches.count, unchanged=same(model.get_weights(), batches.before))
    finally:
        adapter.hook = real_hook
    return dict(raised=False)


def scenario_flatten_layers_gone():
    adapter.FLATTEN_LAYERS = "_flatten_layers_gone"
    x, y = make_data(huge_rows=BAD)
    model = make_model()
    try:
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[nanlab.watch(model)])
    except nanlab.NonFiniteError as error:
        return summary(error.report)
    finally:
        adapter.FLATTEN_LAYERS = "_flatten_layers"
    return dict(raised=False)
'''

TENSORFLOW_SCENARIOS = '''
def scenario_tensorflow_backend():
    x, y = make_data(huge_rows=BAD)
    model = make_model()
    watch = nanlab.watch(model)
    try:
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[watch])
        raised = None
    except nanlab.NonFiniteError as error:
        raised = summary(error.report)
    return dict(kind=type(watch).__module__, callback=isinstance(watch, keras.callbacks.Callback),
                backend=keras.backend.backend(), torch_imported="torch" in sys.modules, raised=raised)
'''


@pytest.fixture(scope="module")
def on_torch():
    return run_script("torch", TORCH_SCENARIOS + PRIVATE_SCENARIOS)


def test_fit_raises_before_the_update_naming_layer_op_samples_and_cause(on_torch):
    outcome = result(on_torch, "raise")
    assert outcome["raised"], "fit trained through the NaN"
    assert (outcome["step"], outcome["phase"], outcome["module"], outcome["op"]) == (2, "forward", "log_probs", "log")
    assert outcome["samples"] == [8, 13]
    assert outcome["cause"] == "log-of-zero"
    assert outcome["parameter"] == "logits/bias"  # Keras' own variable path, without the model's name
    assert outcome["batches"] == 3
    assert outcome["finite"] and outcome["unchanged"], "the weights are those the bad step began with"
    assert outcome["detached"], "nothing of the watch is left on the model or its optimizer"


def test_the_with_form_raises_the_same(on_torch):
    outcome = result(on_torch, "with_block")
    assert (outcome["step"], outcome["module"], outcome["op"], outcome["samples"]) == (2, "log_probs", "log", [8, 13])


def test_stop_ends_fit_with_the_weights_from_before_the_bad_step(on_torch):
    outcome = result(on_torch, "stop")
    assert outcome["stopped"] and outcome["stop_training"]
    assert (outcome["batches"], outcome["epochs"]) == (3, 1), "fit ended after the bad batch"
    assert outcome["unchanged"] and outcome["finite"]
    assert outcome["iterations"] == 2, "the bad step's update was not applied"
    assert (outcome["module"], outcome["op"], outcome["cause"]) == ("log_probs", "log", "log-of-zero")


def test_skip_drops_the_bad_update_and_trains_on(on_torch):
    outcome = result(on_torch, "skip")
    assert outcome["batches"] == 4 and outcome["skipped"] == [2]
    assert outcome["iterations"] == 3 and outcome["finite"]
    assert outcome["module"] == "log_probs"


def test_a_healthy_fit_is_bit_identical_with_and_without_the_watch(on_torch):
    outcome = result(on_torch, "healthy")
    assert outcome["identical"], "weights differ"
    plain, watched = outcome["losses"]
    assert plain == watched
    assert outcome["report"] and outcome["steps"] == 8 and outcome["history"] == 8


def test_the_replay_draws_the_same_dropout_mask(on_torch):
    outcome = result(on_torch, "dropout_replayed_with_the_same_mask")
    assert (outcome["module"], outcome["op"], outcome["cause"]) == ("log_dropped", "log", "log-of-zero")
    assert outcome["samples"] == outcome["zeroed"], "the replay's samples are the rows the step's own mask zeroed"
    assert outcome["replays_saw"] and all(rows == outcome["zeroed"] for rows in outcome["replays_saw"])


def test_a_subclassed_model_names_nested_layers_by_their_keras_paths(on_torch):
    outcome = result(on_torch, "subclassed_model_names_nested_layers")
    assert (outcome["step"], outcome["module"], outcome["op"], outcome["samples"]) == (2, "block/log_probs", "log",
                                                                                      [8, 13])
    assert outcome["parameter"] == "block/logits/bias" and outcome["cause"] == "log-of-zero"


def test_a_hand_written_torch_loop_around_a_keras_model_gets_the_torch_watch(on_torch):
    assert result(on_torch, "torch_loop_gets_the_torch_watch")["kind"] == "nanlab.frameworks.torch.watch.Watch"


def test_apply_not_called_through_the_instance_still_raises_after_the_update(on_torch):
    outcome = result(on_torch, "apply_not_hooked")
    assert outcome["step"] == 2 and outcome["batches"] == 3
    assert "checked after the update" in outcome["note"]


def test_compute_loss_not_called_through_the_instance_still_raises_before_the_update(on_torch):
    outcome = result(on_torch, "compute_loss_not_hooked")
    assert outcome["step"] == 2 and outcome["batches"] == 3 and outcome["unchanged"]
    assert "no forward pass" in outcome["note"]  # nothing recorded to replay: not localised


def test_layers_still_named_without_flatten_layers(on_torch):
    outcome = result(on_torch, "flatten_layers_gone")
    assert (outcome["module"], outcome["op"], outcome["samples"]) == ("log_probs", "log", [8, 13])


def test_the_tensorflow_backend_still_gets_the_tensorflow_watch():
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("needs tensorflow")
    outcome = result(run_script("tensorflow", TENSORFLOW_SCENARIOS), "tensorflow_backend")
    assert outcome["backend"] == "tensorflow"
    assert outcome["kind"] == "nanlab.frameworks.tensorflow.watch" and outcome["callback"]
    assert not outcome["torch_imported"], "recognising a Keras model imported torch"
    assert outcome["raised"] and outcome["raised"]["module"] == "log_probs"
