"""Per-step cost of watching Keras ``fit`` for NaN, as ratios to plain ``fit``, measured in one run.

    python benchmarks/bench_keras.py [--rounds N] [--markdown PATH]
    python benchmarks/bench_keras.py --memory [--rounds N] [--steps N] [--markdown PATH]

``--memory``: peak memory and time per step of plain ``fit`` and ``fit`` with the nanlab callback, on the
transformer block below and on a 10.5-million-parameter MLP, both trained with Adam (whose two moments per weight
the watch must not copy), and on the MLP with Adam clipping by the global gradient norm. Each fit runs in a fresh
Python process, so that one variant's allocations cannot lower or raise another's peak; the variants alternate in
rounds, and a ratio is the median over rounds of the watched run's value over the plain run's in the same round.
Memory is measured two ways: the peak of TensorFlow's own allocations on the CPU during the fit
(``tf.config.experimental.get_memory_info("CPU:0")``: weights, optimizer state, activations, the watch's variables
and copies; TensorFlow's BFC allocator serves the CPU for this, since its default CPU allocator keeps no statistics)
and the process's peak resident set (``ru_maxrss``: the whole process, TensorFlow's runtime and Python included).

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
import json
import os
import resource
import statistics
import subprocess
import sys
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
                     f"{row['cpu ms']:.2f} | {row['cpu ratio']:.3f}x | "
                     f"{row['wall spread'][0]:.3f}-{row['wall spread'][1]:.3f} |")
    return "\n".join(lines)


# -- --memory: peak memory and step time, plain fit and the watched fit, one fresh process per fit ---------------
MEMORY_VARIANTS = ("plain fit", "nanlab callback")
# With oneDNN off (nanlab's default, for CPU sums in a fixed order) TensorFlow keeps no allocation statistics on the
# CPU unless its BFC allocator serves it there; both variants run with it.
CHILD_ENVIRONMENT = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true"}


def wide_mlp() -> keras.Model:
    """10 Dense layers 1024 wide on 1024 features: 10.5 million parameters (42 MB in float32, Adam's moments 84 MB)."""
    layers = [keras.Input((1024,))] + [keras.layers.Dense(1024, activation="relu") for _ in range(10)]
    return keras.Sequential(layers + [keras.layers.Dense(10, dtype="float32")])


MEMORY_MODELS = {
    "transformer block (4 heads, d=64, 64 x 32 tokens), Adam": (transformer_block, "tokens", {}),
    "MLP 10 x 1024 (10.5M parameters, 64 x 1024), Adam": (wide_mlp, "features", {}),
    # Clipping by the global norm needs every gradient before the first update, as the watch's decision does.
    "the same MLP, Adam(global_clipnorm=1.0)": (wide_mlp, "features", {"global_clipnorm": 1.0}),
}


def memory_data(kind: str, steps: int):
    rng = np.random.default_rng(0)
    if kind == "tokens":
        x = rng.integers(0, 1000, size=(BATCH * steps, 32)).astype(np.int32)
    else:
        x = rng.normal(size=(BATCH * steps, 1024)).astype(np.float32)
    return x, rng.integers(0, 10, BATCH * steps)


def memory_child(model_name: str, variant: str, steps: int) -> dict:
    """One fit in this (fresh) process: its peaks and its median step times, as a dict."""
    make, kind, settings = MEMORY_MODELS[model_name]
    keras.utils.set_random_seed(0)
    model = make()
    model.compile(optimizer=keras.optimizers.Adam(1e-3, **settings),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = memory_data(kind, steps)
    clock = StepClock()
    watch = nanlab.watch(model) if variant == "nanlab callback" else None
    callbacks = [clock] + ([watch] if watch is not None else [])
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        tracked = True
    except (ValueError, RuntimeError):
        tracked = False
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    wall, cpu = clock.median_steps()
    copied = sum(int(np.prod(v.shape)) for v in watch._state) if watch is not None else 0
    return {"parameters": model.count_params(), "copied per step": copied,
            "tensor peak MB": tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20 if tracked else None,
            "rss peak MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss before fit MB": before / 1024, "wall ms": 1e3 * wall, "cpu ms": 1e3 * cpu}


def measure_memory(rounds: int, steps: int) -> list[dict]:
    runs = {(name, variant): [] for name in MEMORY_MODELS for variant in MEMORY_VARIANTS}
    for index in range(rounds):
        for name in MEMORY_MODELS:
            order = MEMORY_VARIANTS if index % 2 == 0 else MEMORY_VARIANTS[::-1]
            for variant in order:
                done = subprocess.run([sys.executable, __file__, "--child", name, variant, "--steps", str(steps)],
                                      capture_output=True, text=True, check=True, env=CHILD_ENVIRONMENT)
                runs[name, variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = []
    for name in MEMORY_MODELS:
        plain = runs[name, "plain fit"]
        for variant in MEMORY_VARIANTS:
            own = runs[name, variant]

            def median(key, values=own):
                found = [run[key] for run in values if run[key] is not None]
                return statistics.median(found) if found else None

            def ratio(key):
                pairs = [(a[key], b[key]) for a, b in zip(own, plain) if a[key] is not None and b[key]]
                return statistics.median(a / b for a, b in pairs) if pairs else None

            rows.append({"model": name, "variant": variant, "parameters": own[0]["parameters"],
                         "copied per step": own[0]["copied per step"],
                         **{key: median(key) for key in ("tensor peak MB", "rss peak MB", "wall ms", "cpu ms")},
                         **{f"{key} ratio": ratio(key) for key in ("tensor peak MB", "rss peak MB", "wall ms",
                                                                   "cpu ms")}})
    return rows


def memory_table(rows: list[dict], rounds: int, steps: int) -> str:
    lines = [f"TensorFlow {tf.__version__}, Keras {keras.__version__}, CPU, {THREADS} threads; {rounds} rounds, each "
             f"fit ({steps} steps of batch {BATCH}) in a fresh process, the variants alternating; ratio = median of "
             "per-round ratios to plain fit; tensor peak = TensorFlow's peak CPU allocation during the fit, RSS = the "
             "process's peak resident set", "",
             "| model | variant | values copied per step | tensor peak MB | ratio | peak RSS MB | ratio | "
             "wall ms / step | ratio | CPU ms / step | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(value, form):
        return "n/a" if value is None else format(value, form)

    for row in rows:
        lines.append(f"| {row['model']} | {row['variant']} | {row['copied per step']:,} | "
                     f"{cell(row['tensor peak MB'], '.1f')} | "
                     f"{cell(row['tensor peak MB ratio'], '.3f')}x | {cell(row['rss peak MB'], '.0f')} | "
                     f"{cell(row['rss peak MB ratio'], '.3f')}x | {cell(row['wall ms'], '.2f')} | "
                     f"{cell(row['wall ms ratio'], '.3f')}x | {cell(row['cpu ms'], '.2f')} | "
                     f"{cell(row['cpu ms ratio'], '.3f')}x |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 25; --memory: 3)")
    parser.add_argument("--markdown", help="also write the table, with the command, to this Markdown file")
    parser.add_argument("--memory", action="store_true", help="peak memory and step time, plain vs watched fit")
    parser.add_argument("--steps", type=int, default=30, help="--memory: steps per fit (default 30)")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(THREADS)
    if args.child:
        print(json.dumps(memory_child(*args.child, args.steps)))
        return
    if args.memory:
        rounds = args.rounds or 3
        text = memory_table(measure_memory(rounds, args.steps), rounds, args.steps)
        command = f"{COMMAND} --memory --rounds {rounds} --steps {args.steps}"
        title = "## TensorFlow / Keras: peak memory and time, plain fit vs the watched fit"
    else:
        rounds = args.rounds or 25
        text = table(measure(rounds), rounds)
        command, title = COMMAND, "## TensorFlow / Keras"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(f"{title}\n\n```\n{command} --markdown {args.markdown}\n```\n\n{text}\n")


if __name__ == "__main__":
    main()
