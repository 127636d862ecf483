"""Per-step cost of nanlab.watch where people train: the Transformers Trainer, Lightning and a torch.compile'd model.

    python benchmarks/bench_hosts.py                       # every host, inductor for the compiled model
    python benchmarks/bench_hosts.py --quick               # fewer rounds and steps (a smoke run; noisy ratios)
    python benchmarks/bench_hosts.py --backend aot_eager   # compile without code generation (fast to compile)
    python benchmarks/bench_hosts.py --only trainer        # one host: trainer, lightning or compile
    python benchmarks/bench_hosts.py --threads 1           # a shared 2-core machine (RESULTS.md's run): 2 threads
                                                           # there oversubscribe the cores others also use

Hosts and variants:
- the Transformers ``Trainer`` training a tiny Llama built from its config (no download): the plain Trainer;
  ``nanlab.watch(trainer)``; the Trainer's own ``debug="underflow_overflow"`` (a forward hook on every module that
  checks its output); ``torch.autograd.detect_anomaly`` around ``trainer.train()``;
- a Lightning ``Trainer`` fitting a small CNN ``LightningModule``: plain; ``nanlab.watch(trainer)``;
  ``Trainer(detect_anomaly=True)``;
- a small transformer (2 encoder layers) under ``torch.compile`` in a hand-written loop: compiled;
  compiled + ``nanlab.watch``. Beside the times, dynamo's own counters for a fresh compile and the same training
  steps, without and with the watch: frames compiled (a recompile is one more), unique graphs and graph breaks.

How: the variants are timed in interleaved rounds (the order rotates every round). The trainers are timed in steady
state: a callback reads the wall clock (``time.perf_counter``) and the process CPU time (``time.process_time``) at
the end of each optimizer step, and a round's time per step runs from the end of its first step to the end of its
last, so the trainer's construction, ``train()``/``fit()``'s start and end and the first step are left out (a watch's
one-off work at train start, making its hooks, is left out with them). The compiled model is timed around its loop,
as ``bench_torch.py`` times its models; it is compiled before the rounds (the second of the two
fresh compiles the counters are read from). A variant's ratio is the median over
rounds of (its time / the first variant's time in the same round); the last column gives the quartiles of the
per-round wall-clock ratios, the noise a ratio should be read against.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is built from a config: nothing to download

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import nanlab  # noqa: E402

THREADS = 2
TARGETS = {"trainer": 1.03, "lightning": 1.03, "compile": 1.05}


# -- measuring ------------------------------------------------------------------------------------------------------
class StepClock:
    """Wall-clock and CPU time at the end of each optimizer step; ``per_step`` leaves the first step out."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def tick(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def per_step(self) -> tuple[float, float]:
        steps = len(self.wall) - 1
        if steps < 1:
            raise RuntimeError("fewer than two optimizer steps were timed")
        return (self.wall[-1] - self.wall[0]) / steps, (self.cpu[-1] - self.cpu[0]) / steps


def interleaved(measure, variants, rounds: int) -> dict[str, dict]:
    """Per variant: median wall and CPU ms per step, and the median of per-round ratios to the first variant.
    ``measure(variant)`` returns (wall seconds per step, CPU seconds per step)."""
    for variant in variants:
        measure(variant)  # warm-up: imports, first-call costs, allocator
    wall = {variant: [] for variant in variants}
    cpu = {variant: [] for variant in variants}
    for round_number in range(rounds):
        shift = round_number % len(variants)  # rotate the order, so that no variant always runs first
        for variant in variants[shift:] + variants[:shift]:
            wall_time, cpu_time = measure(variant)
            wall[variant].append(wall_time)
            cpu[variant].append(cpu_time)
    base = variants[0]
    results = {}
    for variant in variants:
        wall_ratios = [t / p for t, p in zip(wall[variant], wall[base])]
        quartiles = statistics.quantiles(wall_ratios, n=4) if len(wall_ratios) > 1 else (wall_ratios[0],) * 3
        results[variant] = {
            "wall_ms": 1e3 * statistics.median(wall[variant]), "cpu_ms": 1e3 * statistics.median(cpu[variant]),
            "wall_ratio": statistics.median(wall_ratios), "wall_spread": (quartiles[0], quartiles[2]),
            "cpu_ratio": statistics.median(t / p for t, p in zip(cpu[variant], cpu[base])),
        }
    return results


def table_rows(label: str, result: dict[str, dict]) -> list[str]:
    return [f"| {label} | {variant} | {r['wall_ms']:.2f} | {r['wall_ratio']:.3f}x | {r['cpu_ms']:.2f} | "
            f"{r['cpu_ratio']:.3f}x | {r['wall_spread'][0]:.3f}-{r['wall_spread'][1]:.3f} |"
            for variant, r in result.items()]


def quiet_anomaly_mode():
    """detect_anomaly warns that it is enabled and that it slows training: once per run, not per round."""
    warnings.filterwarnings("ignore", message="Anomaly Detection has been enabled")
    warnings.filterwarnings("ignore", message=".*detect_anomaly=True.*")


# -- the Transformers Trainer -----------------------------------------------------------------------------------------
LLAMA = "tiny Llama (2 layers, hidden 32, vocab 64; 8 x 64 tokens), Transformers Trainer"
TRAINER_VARIANTS = ("plain Trainer", "nanlab.watch(trainer)", 'debug="underflow_overflow"',
                    "torch.autograd.detect_anomaly")


def trainer_bench(steps: int, rounds: int, device: str) -> dict[str, dict]:
    import transformers
    from transformers import (LlamaConfig, LlamaForCausalLM, PrinterCallback, Trainer, TrainerCallback,
                              TrainingArguments)

    transformers.logging.set_verbosity_error()
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (8 * (steps + 1), 64), generator=generator)
    data = [{"input_ids": row, "labels": row} for row in tokens]
    out = tempfile.TemporaryDirectory()

    class Clock(TrainerCallback):
        def __init__(self):
            self.clock = StepClock()

        def on_step_end(self, args, state, control, **kwargs):
            self.clock.tick()

    def measure(variant: str) -> tuple[float, float]:
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        args = TrainingArguments(output_dir=out.name, max_steps=steps + 1, per_device_train_batch_size=8,
                                 learning_rate=1e-3, logging_strategy="no", save_strategy="no", report_to="none",
                                 disable_tqdm=True, use_cpu=device == "cpu", dataloader_num_workers=0, seed=0,
                                 debug="underflow_overflow" if variant == 'debug="underflow_overflow"' else "")
        clock = Clock()
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[clock])
        trainer.remove_callback(PrinterCallback)
        if variant == "nanlab.watch(trainer)":
            nanlab.watch(trainer)
        anomaly = variant == "torch.autograd.detect_anomaly"
        with torch.autograd.detect_anomaly(check_nan=True) if anomaly else contextlib.nullcontext():
            trainer.train()
        return clock.clock.per_step()

    return interleaved(measure, TRAINER_VARIANTS, rounds)


# -- Lightning --------------------------------------------------------------------------------------------------------
LIGHTNING = "small CNN LightningModule (2 conv + linear, 64 x 1x28x28), Lightning Trainer"
LIGHTNING_VARIANTS = ("plain Trainer", "nanlab.watch(trainer)", "Trainer(detect_anomaly=True)")


def lightning_bench(steps: int, rounds: int, device: str) -> dict[str, dict]:
    import lightning as L

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec")  # inside Lightning 2.6 under torch 2.13
    warnings.filterwarnings("ignore", message=".*does not have many workers")

    class SmallCNN(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
            self.head = nn.Linear(32 * 7 * 7, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            return self.head(x.flatten(1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class Clock(L.Callback):
        def __init__(self):
            self.clock = StepClock()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.clock.tick()

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64 * (steps + 1), 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (len(x),), generator=generator)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)

    def measure(variant: str) -> tuple[float, float]:
        torch.manual_seed(0)
        clock = Clock()
        trainer = L.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_steps=steps + 1,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=[clock],
                            detect_anomaly=variant == "Trainer(detect_anomaly=True)")
        if variant == "nanlab.watch(trainer)":
            nanlab.watch(trainer)
        trainer.fit(SmallCNN(), loader)
        return clock.clock.per_step()

    return interleaved(measure, LIGHTNING_VARIANTS, rounds)


# -- torch.compile ----------------------------------------------------------------------------------------------------
COMPILE_VARIANTS = ("compiled", "compiled + nanlab.watch")


class SmallTransformer(nn.Module):
    """Two pre-norm encoder layers (d_model 128, 4 heads, feed-forward 512) over 64 token embeddings, mean-pooled."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(1000, 128)
        self.blocks = nn.Sequential(*[nn.TransformerEncoderLayer(128, 4, 512, batch_first=True, norm_first=True,
                                                                 dropout=0.1) for _ in range(2)])
        self.head = nn.Linear(128, 10)

    def forward(self, tokens):
        return self.head(self.blocks(self.embed(tokens)).mean(dim=1))


class CompiledLoop:
    """One compiled model, optimizer and batch, trained plain or watched in turn (one compile for both: the
    watch's hooks sit on the compiled wrapper and run outside the graph)."""

    def __init__(self, compiled, model, device):
        self.compiled, self.device = compiled, device
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 1000, (32, 64), generator=generator).to(device)
        self.y = torch.randint(0, 10, (32,), generator=generator).to(device)

    def run(self, variant: str, steps: int) -> None:
        watch = nanlab.watch(self.compiled, self.optimizer, F.cross_entropy) if "watch" in variant else None
        loss_fn = watch.loss_fn if watch is not None else F.cross_entropy
        with watch or contextlib.nullcontext():
            for _ in range(steps):
                self.optimizer.zero_grad()
                loss_fn(self.compiled(self.x), self.y).backward()
                self.optimizer.step()
        if self.device == "cuda":
            torch.cuda.synchronize()

    def measure(self, variant: str, steps: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        self.run(variant, steps)
        return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def dynamo_counts(backend: str, variant: str, steps: int, device: str) -> tuple[dict[str, int], CompiledLoop]:
    """A fresh compile and ``steps`` training steps; dynamo's counters (frames compiled, unique graphs, graph
    breaks) and the compiled loop."""
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = SmallTransformer().to(device)
    counter = CompileCounterWithBackend(backend)
    loop = CompiledLoop(torch.compile(model, backend=counter), model, device)
    loop.run(variant, steps)
    counts = {"frames compiled": counter.frame_count, "unique graphs": counters["stats"]["unique_graphs"],
              "graph breaks": sum(counters["graph_break"].values())}
    return counts, loop


def compile_bench(steps: int, rounds: int, device: str, backend: str):
    """Two fresh compiles for the counts (the watch attached from the first call in the second); the rounds then
    time the second compiled model with and without the watch (no recompile either way: the counts say so)."""
    counts = {}
    for variant in COMPILE_VARIANTS:
        counts[variant], loop = dynamo_counts(backend, variant, steps, device)
    return counts, interleaved(lambda variant: loop.measure(variant, steps), COMPILE_VARIANTS, rounds)


# -- main -------------------------------------------------------------------------------------------------------------
def verdict(result: dict[str, dict], watched: str, target: float) -> str:
    ratio = result[watched]["wall_ratio"]
    return f"{watched}: {ratio:.3f}x wall, target <= {target:.2f}x: {'met' if ratio <= target else 'NOT met'}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps (a smoke run; noisy ratios)")
    parser.add_argument("--rounds", type=int, default=31, help="interleaved rounds per host (default 31)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the models train")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    parser.add_argument("--only", choices=("trainer", "lightning", "compile"), action="append",
                        help="run only this host (repeatable)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "bench_hosts: --device cuda, but torch sees no CUDA GPU here\n")
    rounds, steps = (3, 6) if args.quick else (args.rounds, 20)
    hosts = args.only or ["trainer", "lightning", "compile"]
    quiet_anomaly_mode()
    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    versions = [f"torch {torch.__version__}"]
    for name in ("transformers", "lightning"):
        with contextlib.suppress(ImportError):
            versions.append(f"{name} {__import__(name).__version__}")
    load = f"; load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, "getloadavg") else ""
    threads = f"{args.threads} thread{'s' if args.threads != 1 else ''}"
    print(f"{', '.join(versions)}; {where}, {threads}; {rounds} interleaved rounds of {steps} timed "
          f"steps; ratio = median of per-round ratios to the first variant; last column: the quartiles of the "
          f"per-round wall-clock ratios{load}")
    print()
    print("| model | variant | wall ms / step | wall ratio | CPU ms / step | CPU ratio "
          "| wall ratio, middle half of rounds |")
    print("|---|---|---|---|---|---|---|")
    verdicts, counts = [], None
    if "trainer" in hosts:
        result = trainer_bench(steps, rounds, args.device)
        print("\n".join(table_rows(LLAMA, result)), flush=True)
        verdicts.append(verdict(result, "nanlab.watch(trainer)", TARGETS["trainer"]) + " (Transformers)")
    if "lightning" in hosts:
        result = lightning_bench(steps, rounds, args.device)
        print("\n".join(table_rows(LIGHTNING, result)), flush=True)
        verdicts.append(verdict(result, "nanlab.watch(trainer)", TARGETS["lightning"]) + " (Lightning)")
    if "compile" in hosts:
        counts, result = compile_bench(steps, rounds, args.device, args.backend)
        label = f"small transformer (2 layers, d 128, 32 x 64 tokens), torch.compile backend={args.backend!r}"
        print("\n".join(table_rows(label, result)), flush=True)
        verdicts.append(verdict(result, "compiled + nanlab.watch", TARGETS["compile"]))
    if counts is not None:
        print()
        print(f"dynamo's counters, a fresh compile (backend={args.backend!r}) and {steps} training steps:")
        print()
        print("| variant | " + " | ".join(counts[COMPILE_VARIANTS[0]]) + " |")
        print("|---|" + "---|" * len(counts[COMPILE_VARIANTS[0]]))
        for variant, values in counts.items():
            print(f"| {variant} | " + " | ".join(str(value) for value in values.values()) + " |")
        added = {name: counts[COMPILE_VARIANTS[1]][name] - counts[COMPILE_VARIANTS[0]][name]
                 for name in counts[COMPILE_VARIANTS[0]]}
        verdicts.append("the watch adds " + ", ".join(f"{value} {name}" for name, value in added.items()))
    print()
    for line in verdicts:
        print(f"- {line}")
    print(f"\n(command: python {' '.join(sys.argv)})")


if __name__ == "__main__":
    main()
