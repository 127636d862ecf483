"""One Keras training script, run in its own Python process per backend, for the tests of nanlab.watch(model) on
Keras 3's non-TensorFlow backends (tests/test_host_keras_torch.py, tests/test_host_keras_jax.py).

KERAS_BACKEND must be set before Keras is imported, and the test process has Keras on TensorFlow, so each backend's
scenarios (functions named ``scenario_*``, appended to the script below) run once in a subprocess that prints what
each saw as JSON. The model is a classifier whose log-probabilities are written by hand, log(softmax(z)) as its own
layer: two samples with huge inputs (rows ``BAD``) make a probability underflow to exactly 0 in the third batch of
16 (step 2), and log(0) is -inf.
"""
import json
import os
import subprocess
import sys
import textwrap

SCRIPT = '''
import json, os, sys, traceback
os.environ["KERAS_BACKEND"] = "{backend}"
import numpy as np
import keras
from keras import layers, ops
import nanlab


class LogSoftmax(layers.Layer):
    """log(softmax(z)) written by hand: a probability that underflows to 0 gives -inf."""

    def call(self, z):
        return ops.log(ops.softmax(z))


def nll(y_true, log_probs):
    picked = ops.take_along_axis(log_probs, ops.cast(ops.reshape(y_true, (-1, 1)), "int32"), axis=1)
    return -ops.mean(picked)


def make_model(dropout=0.0, optimizer=None):
    model = keras.Sequential([
        keras.Input((4,)),
        layers.Dense(8, activation="relu", name="hidden",
                     kernel_initializer=keras.initializers.GlorotUniform(seed=1)),
        layers.Dropout(dropout, seed=2),
        layers.Dense(3, name="logits", kernel_initializer=keras.initializers.GlorotUniform(seed=3)),
        LogSoftmax(name="log_probs"),
    ])
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.1), loss=nll)
    return model


def make_data(huge_rows=()):
    rng = np.random.RandomState(0)
    x, y = rng.randn(64, 4).astype("float32"), rng.randint(0, 3, 64)
    for row in huge_rows:
        x[row] *= 1e4
    return x, y


BAD = (40, 45)  # batch 2 of 16 (rows 32..47): its samples 8 and 13


class Batches(keras.callbacks.Callback):
    """How many batches ran, and the weights the last one began with."""

    def __init__(self):
        super().__init__()
        self.count, self.before = 0, None

    def on_train_batch_begin(self, batch, logs=None):
        self.count += 1
        self.before = [w.copy() for w in self.model.get_weights()]


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


def finite(weights):
    return all(np.isfinite(w).all() for w in weights)


def summary(report):
    return dict(step=report.step, phase=str(report.phase), module=report.module, op=report.op,
                samples=report.samples, cause=report.cause, parameter=report.parameter, value=report.value,
                note=report.note or "", text=str(report), losses=len(report.losses), grad_norms=len(report.grad_norms))

{scenarios}

results = {{}}
for name, scenario in list(globals().items()):
    if name.startswith("scenario_"):
        try:
            results[name[len("scenario_"):]] = scenario()
        except Exception:
            results[name[len("scenario_"):]] = {{"error": traceback.format_exc()}}
print(json.dumps(results))
'''


def run_script(backend: str, scenarios: str) -> dict:
    """Run the script with ``scenarios`` on Keras' ``backend`` in a subprocess; each scenario's result by name."""
    code = SCRIPT.format(backend=backend, scenarios=textwrap.dedent(scenarios))
    env = dict(os.environ, KERAS_BACKEND=backend, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3",
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def result(results: dict, name: str) -> dict:
    """One scenario's result; a scenario that raised fails the test with its traceback."""
    outcome = results[name]
    assert "error" not in outcome, outcome.get("error")
    return outcome
