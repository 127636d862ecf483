"""The Keras watch beyond model.fit: a tf.Module or a list of variables trained with GradientTape and a Keras
optimizer, fit with steps_per_execution, and fit under tf.distribute.MirroredStrategy on two logical CPUs."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("tensorflow")
import nanlab  # noqa: E402
from nanlab.errors import NanlabError  # noqa: E402
from nanlab.frameworks.tensorflow.backend import keras, tf  # noqa: E402

BATCH = 16


class Regressor(tf.Module):
    def __init__(self):
        super().__init__(name="regressor")
        self.w = tf.Variable(tf.random.normal((4, 1), seed=0), name="w")
        self.b = tf.Variable(tf.zeros(1), name="b")

    def __call__(self, x):
        return tf.matmul(x, self.w) + self.b


def regression_data():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(10 * BATCH, 4)) * 10).astype(np.float32)
    return x, (x @ np.ones((4, 1))).astype(np.float32)


def mse(y, prediction):
    return tf.reduce_mean(tf.square(y - prediction))


def train(watch, variables, optimizer, predict, steps=10):
    x, y = regression_data()

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = watch.loss_fn(y, predict(x))
        optimizer.apply(tape.gradient(loss, variables), variables)

    for step in range(steps):
        batch = tf.constant(x[step * BATCH:(step + 1) * BATCH]), tf.constant(y[step * BATCH:(step + 1) * BATCH])
        with watch.checked_step(*batch):
            train_step(*batch)


def test_a_tf_module_trained_with_gradient_tape_is_watched():
    tf.random.set_seed(0)
    module = Regressor()
    optimizer = keras.optimizers.SGD(0.5)  # too large for inputs of scale 10
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(module, optimizer, mse) as watch:
            train(watch, module.trainable_variables, optimizer, module)
    report = raised.value.report
    assert (report.phase, report.module, report.op) == ("loss", "loss", "square")
    assert report.step == watch.step == len(watch.history.grad_norms) > 3
    # inputs of scale 10 make the rate too large: both rules fit, the input scale is the more specific evidence
    assert report.cause == "unnormalised-inputs" and "high-learning-rate" in report.verdicts and report.growth > 1e6
    assert all(np.isfinite(v.numpy()).all() for v in module.trainable_variables)


def test_a_healthy_tf_module_is_unchanged_by_the_watch():
    tf.random.set_seed(0)
    plain = Regressor()
    optimizer = keras.optimizers.SGD(0.001)
    x, y = regression_data()
    for step in range(10):
        with tf.GradientTape() as tape:
            loss = mse(y[step * BATCH:(step + 1) * BATCH], plain(x[step * BATCH:(step + 1) * BATCH]))
        optimizer.apply(tape.gradient(loss, plain.trainable_variables), plain.trainable_variables)
    tf.random.set_seed(0)
    module = Regressor()
    optimizer = keras.optimizers.SGD(0.001)
    with nanlab.watch(module, optimizer, mse) as watch:
        train(watch, module.trainable_variables, optimizer, module)
    assert watch.step == 10 and watch.history.losses[-1] < watch.history.losses[0] / 10
    np.testing.assert_allclose(module.w.numpy(), plain.w.numpy(), rtol=1e-6)


def test_a_list_of_variables_is_localised_in_its_loss_replayed_alone():
    tf.random.set_seed(0)
    w, b = tf.Variable(tf.random.normal((4, 1), seed=0)), tf.Variable(tf.zeros(1))
    optimizer = keras.optimizers.SGD(0.5)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch([w, b], optimizer, mse) as watch:
            train(watch, [w, b], optimizer, lambda x: tf.matmul(x, w) + b)
    report = raised.value.report
    assert report.step == watch.step > 3 and "list of variables has no forward pass" in report.note
    assert (report.phase, report.module, report.op) == ("loss", "loss", "square")
    assert np.isfinite(w.numpy()).all() and np.isfinite(b.numpy()).all()


def test_the_readme_loop_over_a_list_of_variables_names_the_log_of_its_hand_written_loss():
    """A forward written as a plain function, GradientTape, apply_gradients(zip(...)) and -log(p) by hand: the loss
    replayed alone from what the step gave watch.loss_fn finds the log of an exact 0 (it was "an unlocated op")."""
    tf.random.set_seed(0)
    rng = np.random.default_rng(0)
    x, y = (rng.normal(size=(4 * BATCH, 5)) * 4).astype(np.float32), rng.integers(0, 3, 4 * BATCH)
    w, b = tf.Variable(tf.random.normal((5, 3), seed=0)), tf.Variable(tf.zeros(3))
    variables = [w, b]

    def forward(x):
        return tf.nn.softmax(tf.matmul(x, w) + b)

    def negative_log_likelihood(y, p):
        return tf.reduce_mean(-tf.math.log(tf.gather(p, y, batch_dims=1)))

    optimizer = keras.optimizers.SGD(5.0)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(variables, optimizer, negative_log_likelihood) as watch:
            @tf.function
            def train_step(x, y):
                with tf.GradientTape() as tape:
                    loss = watch.loss_fn(y, forward(x))
                optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

            for step in range(20):
                batch = tf.constant(x[step % 4 * BATCH:(step % 4 + 1) * BATCH]), \
                    tf.constant(y[step % 4 * BATCH:(step % 4 + 1) * BATCH])
                with watch.checked_step(*batch):
                    train_step(*batch)
    report = raised.value.report
    assert (report.phase, report.module, report.op, report.value) == ("loss", "loss", "log", "-inf")
    assert report.op_inputs[0].zeros == len(report.samples) > 0 and report.step == watch.step
    picked = forward(batch[0]).numpy()[np.arange(BATCH), batch[1].numpy()]
    assert report.samples == np.flatnonzero(picked == 0).tolist()
    assert report.cause == "log-of-zero", str(report)


def test_a_gradient_tape_loop_needs_the_optimizer():
    with pytest.raises(NanlabError, match="needs its optimizer"):
        with nanlab.watch(Regressor(), None, mse):
            pass


def test_steps_per_execution_is_refused_at_attach_time_in_one_line():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=4)
    with pytest.raises(NanlabError) as refused:
        nanlab.watch(model)
    message = str(refused.value)
    assert "steps_per_execution=1" in message and "got 4" in message and "\n" not in message
    model.compile(optimizer="sgd", loss="mse")  # attached first, compiled with 4 later: fit refuses at its start
    watch = nanlab.watch(model)
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=4)
    x, y = regression_data()
    with pytest.raises(NanlabError, match="got 4"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[watch])


MIRRORED = textwrap.dedent("""
    import json, sys
    from nanlab.frameworks.tensorflow.backend import keras, tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import nanlab, nanlab.causes.high_learning_rate

    data = nanlab.causes.high_learning_rate.make_data(0)
    x, y = data.x_train[:512], data.y_train[:512]

    def fit(policy, strategy):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(32, activation="relu"),
                                      keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)])
            model.compile(optimizer=keras.optimizers.SGD(20.0),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            watch = nanlab.watch(model, on_nonfinite=policy)
            try:
                model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, callbacks=[watch])
                ended = "cleanly"
            except nanlab.NonFiniteError:
                ended = "NonFiniteError"
        finite = all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in model.trainable_variables)
        return {"ended": ended, "replicas": strategy.num_replicas_in_sync, "step": watch.report.step,
                "phase": watch.report.phase, "cause": watch.report.cause, "losses": watch.history.losses,
                "grad_norms": watch.history.grad_norms, "stopped": watch.stopped, "finite": finite}

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    print(json.dumps({"raise": fit("raise", mirrored), "stop": fit("stop", mirrored),
                      "single": fit("raise", tf.distribute.get_strategy())}))
""")


def test_fit_under_mirrored_strategy_on_two_logical_cpus():
    """Run in a child process: logical devices must be set before TensorFlow initialises its devices."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    raised, stopped, single = runs["raise"], runs["stop"], runs["single"]
    assert raised["replicas"] == stopped["replicas"] == 2 and single["replicas"] == 1
    assert raised["ended"] == "NonFiniteError" and stopped["ended"] == "cleanly" and stopped["stopped"]
    for run in (raised, stopped):
        assert (run["step"], run["phase"], run["cause"]) == (single["step"], single["phase"], single["cause"])
        assert run["step"] > 2 and run["finite"]
        np.testing.assert_allclose(run["losses"], single["losses"], rtol=1e-4)
        np.testing.assert_allclose(run["grad_norms"], single["grad_norms"], rtol=1e-4)


def test_tensorflow_names_map_onto_the_shared_vocabulary():
    from nanlab.frameworks.tensorflow.names import OP_FAMILIES, dtype_name, is_sparse_loss, optimizer_facts
    from nanlab.watching.vocabulary import OpFamily, op_family

    expected = {"RealDiv": OpFamily.DIV, "DivNoNan": OpFamily.DIV, "Reciprocal": OpFamily.DIV,
                "Log": OpFamily.LOG, "Log1p": OpFamily.LOG, "Xlogy": OpFamily.LOG, "Sqrt": OpFamily.SQRT,
                "SqrtGrad": OpFamily.SQRT, "Rsqrt": OpFamily.RSQRT, "RsqrtGrad": OpFamily.RSQRT,
                "Pow": OpFamily.POW, "Exp": OpFamily.EXP, "Softmax": OpFamily.SOFTMAX,
                "LogSoftmax": OpFamily.SOFTMAX, "EuclideanNorm": OpFamily.NORM, "Mean": OpFamily.REDUCE,
                "Sum": OpFamily.REDUCE, "MatMul": OpFamily.MATMUL, "BatchMatMulV2": OpFamily.MATMUL,
                "Conv2D": OpFamily.MATMUL, "Acos": OpFamily.INVERSE_TRIG, "Atanh": OpFamily.INVERSE_TRIG,
                "Sin": OpFamily.TRIG, "AddV2": OpFamily.ELEMENTWISE, "Mul": OpFamily.ELEMENTWISE,
                "Relu": OpFamily.ACTIVATION, "Tanh": OpFamily.ACTIVATION, "Softplus": OpFamily.ACTIVATION,
                "SelectV2": OpFamily.FILL, "Fill": OpFamily.FILL, "FusedBatchNormV3": OpFamily.NORMALIZATION,
                "SparseSoftmaxCrossEntropyWithLogits": OpFamily.LOGIT_LOSS, "Unheard": OpFamily.OTHER}
    assert {name: op_family(name, OP_FAMILIES) for name in expected} == expected
    assert all(name == name.lower() for name in OP_FAMILIES)

    assert (dtype_name(tf.float16), dtype_name("bfloat16"), dtype_name(np.float32)) == ("float16", "bfloat16",
                                                                                        "float32")
    adam = keras.optimizers.Adam(1e-3, epsilon=1e-8, weight_decay=0.01)
    facts = optimizer_facts(adam, [tf.Variable(tf.zeros(2, tf.float16))])
    assert (facts.kind, facts.learning_rate, facts.eps, facts.betas, facts.weight_decay, facts.param_dtype) == (
        "Adam", pytest.approx(1e-3), 1e-8, (0.9, 0.999), 0.01, "float16")
    scaled = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1, momentum=0.9), initial_scale=1024.0)
    scaled.build([tf.Variable(tf.zeros(2))])
    facts = optimizer_facts(scaled)
    assert (facts.kind, facts.momentum, facts.eps, facts.betas, facts.loss_scale) == ("SGD", 0.9, None, None, 1024.0)
    assert optimizer_facts(None) is None

    assert is_sparse_loss(keras.losses.SparseCategoricalCrossentropy()) and is_sparse_loss(
        "sparse_categorical_crossentropy") and is_sparse_loss(keras.losses.sparse_categorical_crossentropy)
    assert is_sparse_loss(tf.function(keras.losses.SparseCategoricalCrossentropy(from_logits=True)))
    assert not is_sparse_loss("mse") and not is_sparse_loss(keras.losses.CategoricalCrossentropy()) and \
        not is_sparse_loss(None)


def test_a_weight_the_last_update_spoiled_is_found_as_the_loop_ends():
    """No later step shows it, so the watch looks once as its block ends (as the PyTorch watch does)."""
    w = tf.Variable([[1.0]])
    optimizer = keras.optimizers.SGD(3e38)  # a gradient of 2, an update past float32's range
    x, y = tf.ones((BATCH, 1)), tf.zeros((BATCH, 1))
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch([w], optimizer, mse) as watch:
            with watch.checked_step(x, y):
                with tf.GradientTape() as tape:
                    loss = watch.loss_fn(y, tf.matmul(x, w))
                optimizer.apply(tape.gradient(loss, [w]), [w])
    report = raised.value.report
    assert (report.step, report.phase, report.op) == (0, "optimizer update", "apply_gradients")
    assert watch.step == 1 and watch.history.losses and not np.isfinite(w.numpy()).all()

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, kernel_initializer="ones", use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(3e38), loss="mse")
    with pytest.raises(nanlab.NonFiniteError) as raised:  # fit: looked at in on_train_end
        model.fit(np.ones((BATCH, 1), np.float32), np.zeros((BATCH, 1), np.float32), batch_size=BATCH, verbose=0,
                  callbacks=[nanlab.watch(model)])
    assert (raised.value.report.step, raised.value.report.phase) == (0, "optimizer update")
    assert raised.value.report.parameter.endswith("kernel")
