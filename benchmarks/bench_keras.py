"""Per-step cost of watching Keras ``fit`` for NaN, as ratios to plain ``fit``, measured in one run.

    python benchmarks/bench_keras.py [--rounds N] [--markdown PATH]

Models: a small CNN, a small transformer block (self-attention + feed-forward), and the small CNN under the
``mixed_float16`` policy (with Keras' LossScaleOptimizer). Variants: plain ``fit``; ``fit`` with the nanlab
callback; with ``keras.callbacks.TerminateOnNaN``; under ``tf.debugging.enable_check_numerics``. TensorFlow runs
with 2 threads.

Each round fits every variant of every model for a few steps, interleaved, so that the machine's load falls on all
of them alike. A step's cost is measured between consecutive batch ends (the first batch of a fit, which may trace,
is left out), both as wall-clock time and as the process's CPU time (all threads). A variant's ratio is the median
over rounds of (its median step / plain fit's median step in the same round); round 0 warms up and is not counted.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

import nanlab  # noqa: E402
from nanlab.frameworks.tensorflow.backend import keras, tf  # noqa: E402

THREADS, STEPS_PER_ROUND, BATCH = 2, 12, 64
VARIANTS = ("plain fit", "nanlab callback", "TerminateOnNaN", "tf.debugging.enable_check_numerics")
COMMAND = "python benchmarks/bench_keras.py"


class StepClock(keras.callbacks.Callback):
    """Wall-clock and process CPU time at each batch end: their differences are the steady-state step costs."""

    def __init__(self):
        super().__init__()
        self.ends: list[tuple[float, float]] = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append((time.perf_counter(), time.process_time()))

    def median_steps(self) -> tuple[float, float]:
        wall, cpu = np.diff(np.array(self.ends), axis=0).T
        return statistics.median(wall), statistics.median(cpu)


def small_cnn() -> keras.Model:
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(10, dtype="float32"),
    ])


def transformer_block() -> keras.Model:
    """Token embedding, one pre-norm block (4-head self-attention, feed-forward), mean pooling, a linear head."""
    tokens = keras.Input((32,), dtype="int32")
    x = keras.layers.Embedding(1000, 64)(tokens)
    attended = keras.layers.MultiHeadAttention(num_heads=4, key_dim=16)(*[keras.layers.LayerNormalization()(x)] * 2)
    x = x + attended
    x = x + keras.layers.Dense(64)(keras.layers.Dense(256, activation="gelu")(keras.layers.LayerNormalization()(x)))
    return keras.Model(tokens, keras.layers.Dense(10, dtype="float32")(keras.layers.GlobalAveragePooling1D()(x)))


MODELS = {
    "small CNN (2 conv + dense, 64 x 28x28x1)": (small_cnn, "float32", "image"),
    "transformer block (4 heads, d=64, 64 x 32 tokens)": (transformer_block, "float32", "tokens"),
    "small CNN, mixed_float16 + LossScaleOptimizer": (small_cnn, "mixed_float16", "image"),
}


def build(make, policy: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = make()
        model.compile(optimizer=keras.optimizers.SGD(0.01),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model


def data(kind: str):
    rng = np.random.default_rng(0)
    if kind == "image":
        x = rng.normal(size=(BATCH * STEPS_PER_ROUND, 28, 28, 1)).astype(np.float32)
    else:
        x = rng.integers(0, 1000, size=(BATCH * STEPS_PER_ROUND, 32)).astype(np.int32)
    return x, rng.integers(0, 10, BATCH * STEPS_PER_ROUND)


def fit_once(variant: str, model: keras.Model, extra: list, x, y) -> tuple[float, float]:
    clock = StepClock()
    checking = variant == "tf.debugging.enable_check_numerics"
    if checking:
        tf.debugging.enable_check_numerics()
    try:
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[clock] + extra)
    finally:
        if checking:
            tf.debugging.disable_check_numerics()
    return clock.median_steps()


def measure(rounds: int) -> list[dict]:
    rows = []
    setups = {}
    for name, (make, policy, kind) in MODELS.items():
        for variant in VARIANTS:
            model = build(make, policy)
            extra = {"nanlab callback": [nanlab.watch(model)] if variant == "nanlab callback" else [],
                     "TerminateOnNaN": [keras.callbacks.TerminateOnNaN()]}.get(variant, [])
            setups[name, variant] = (model, extra)
    steps = {key: [] for key in setups}
    for _ in range(rounds + 1):
        for name, (make, policy, kind) in MODELS.items():
            x, y = data(kind)
            for variant in VARIANTS:
                model, extra = setups[name, variant]
                steps[name, variant].append(fit_once(variant, model, extra, x, y))
    for name in MODELS:
        plain = steps[name, "plain fit"][1:]
        for variant in VARIANTS:
            own = steps[name, variant][1:]
            wall_ratios = [w / p for (w, _), (p, _) in zip(own, plain)]
            rows.append({
                "model": name, "variant": variant,
                "wall ms": 1e3 * statistics.median(w for w, _ in own),
                "wall ratio": statistics.median(wall_ratios),
                "wall spread": statistics.quantiles(wall_ratios, n=4)[::2],
                "cpu ms": 1e3 * statistics.median(c for _, c in own),
                "cpu ratio": statistics.median(c / p for (_, c), (_, p) in zip(own, plain)),
            })
    return rows


def table(rows: list[dict], rounds: int) -> str:
    lines = [f"TensorFlow {tf.__version__}, Keras {keras.__version__}, CPU, {THREADS} threads; {rounds} interleaved "
             f"rounds of {STEPS_PER_ROUND} steps (after one warm-up round); ratio = median of per-round ratios to "
             "plain fit; last column: the quartiles of the per-round wall-clock ratios", "",
             "| model | variant | wall ms / step | wall ratio | CPU ms / step | CPU ratio | "
             "wall ratio, middle half of rounds |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['variant']} | {row['wall ms']:.2f} | {row['wall ratio']:.3f}x | "
                     f"{row['cpu ms']:.2f} | {row['cpu ratio']:.3f}x | {row['wall spread'][0]:.3f}-{row['wall spread'][1]:.3f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25, help="interleaved rounds (default 25)")
    parser.add_argument("--markdown", help="also write the table, with the command, to this Markdown file")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(THREADS)
    text = table(measure(args.rounds), args.rounds)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(f"## TensorFlow / Keras\n\n```\n{COMMAND} --markdown {args.markdown}\n```\n\n{text}\n")


if __name__ == "__main__":
    main()
