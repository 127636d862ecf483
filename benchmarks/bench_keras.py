"""Per-step cost of watching Keras ``fit`` for NaN, as a ratio to plain ``fit``, measured in one run.

    python benchmarks/bench_keras.py

Variants: plain ``fit``; ``fit`` with the nanlab callback; ``fit`` under ``tf.debugging.enable_check_numerics``.
Each round fits every variant for a few steps; a step's time is the process CPU time between consecutive batch
ends (so the first batch of a fit, which may trace, is left out; CPU time because on a shared machine wall time
mostly measures the other processes), and a variant's ratio is the median over rounds of (its median step /
plain's median step in the same round).
"""
from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

import nanlab  # noqa: E402
from nanlab.frameworks.tensorflow.loop import keras, tf  # noqa: E402

ROUNDS, STEPS_PER_ROUND, BATCH = 15, 12, 64
VARIANTS = ("plain fit", "nanlab callback", "tf.debugging.enable_check_numerics")


class StepClock(keras.callbacks.Callback):
    """Process CPU time between consecutive batch ends: the steady-state cost of one step."""

    def __init__(self):
        super().__init__()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.process_time())

    def median_step(self) -> float:
        return statistics.median(np.diff(self.ends))


def small_cnn() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(10),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def fit_once(name: str, model: keras.Model, x, y) -> float:
    clock = StepClock()
    callbacks = [clock] + ([nanlab.watch(model)] if name == "nanlab callback" else [])
    if name == "tf.debugging.enable_check_numerics":
        tf.debugging.enable_check_numerics()
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    if name == "tf.debugging.enable_check_numerics":
        tf.debugging.disable_check_numerics()
    return clock.median_step()


def main():
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * STEPS_PER_ROUND, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, BATCH * STEPS_PER_ROUND)
    models = {name: small_cnn() for name in VARIANTS}
    steps = {name: [] for name in VARIANTS}
    for _ in range(ROUNDS):
        for name in VARIANTS:
            steps[name].append(fit_once(name, models[name], x, y))
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, CPU, 1 thread; process CPU time, {ROUNDS} "
          f"interleaved rounds of "
          f"{STEPS_PER_ROUND} steps, ratio = median of per-round ratios")
    print()
    print("| model | variant | CPU ms / step | ratio to plain |")
    print("|---|---|---|---|")
    for name in VARIANTS:
        ratio = statistics.median(v / p for v, p in zip(steps[name], steps["plain fit"]))
        print(f"| small CNN (2 conv + dense, 64 x 28x28x1) | {name} | {1e3 * statistics.median(steps[name]):.2f} "
              f"| {ratio:.3f}x |")


if __name__ == "__main__":
    main()
