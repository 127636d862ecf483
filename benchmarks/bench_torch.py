"""Per-step cost of watching PyTorch training for NaN, as a ratio to the plain loop, measured in one run.

    python benchmarks/bench_torch.py

Variants: plain loop; nanlab.watch; torch.autograd.detect_anomaly; a forward hook on every module that checks
``isfinite`` (the usual hand-rolled NaN hunt). Models: a small CNN and an RNN. Variants are timed in interleaved
rounds of CPU time (``time.process_time``: on a shared machine, wall time mostly measures the other processes);
each variant's ratio is the median over rounds of (its time / the plain loop's time in the same round).
"""
from __future__ import annotations

import contextlib
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

import nanlab

ROUNDS, STEPS_PER_ROUND, WARMUP = 25, 5, 5


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


class SmallRNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.RNN(16, 128, batch_first=True), nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


MODELS = {
    "small CNN (2 conv + linear, 64 x 1x28x28)": (SmallCNN, (64, 1, 28, 28)),
    "RNN (tanh, 128 units, 64 x 50 steps x 16)": (SmallRNN, (64, 50, 16)),
}


class Trainer:
    """One model, optimizer and batch, trained under each variant in turn (so that all variants share memory)."""

    def __init__(self, make_model, shape):
        torch.manual_seed(0)
        self.model = make_model()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.x, self.y = torch.randn(shape), torch.randint(0, 10, (shape[0],))

    def run(self, variant: str, steps: int) -> None:
        loss_fn, hooks, context = F.cross_entropy, [], contextlib.nullcontext()
        if variant == "nanlab.watch":
            context = nanlab.watch(self.model, self.optimizer, F.cross_entropy)
            loss_fn = context.loss_fn
        elif variant == "torch.autograd.detect_anomaly":
            context = torch.autograd.detect_anomaly(check_nan=True)
        elif variant == "isfinite hook on every module":
            hooks = [module.register_forward_hook(_check_output) for module in self.model.modules()]
        with context:
            for _ in range(steps):
                self.optimizer.zero_grad()
                loss_fn(self.model(self.x), self.y).backward()
                self.optimizer.step()
        for hook in hooks:
            hook.remove()


def _check_output(module, args, output):
    if not torch.isfinite(output[0] if isinstance(output, tuple) else output).all():
        raise FloatingPointError(f"non-finite output in {type(module).__name__}")


VARIANTS = ("plain loop", "nanlab.watch", "torch.autograd.detect_anomaly", "isfinite hook on every module")


def measure(make_model, shape) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per step, and median paired ratio to the plain loop, per variant."""
    trainer = Trainer(make_model, shape)
    for variant in VARIANTS:
        trainer.run(variant, WARMUP)
    times = {variant: [] for variant in VARIANTS}
    for round_number in range(ROUNDS):
        shift = round_number % len(VARIANTS)  # rotate the order, so that no variant always runs first
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            start = time.process_time()
            trainer.run(variant, STEPS_PER_ROUND)
            times[variant].append((time.process_time() - start) / STEPS_PER_ROUND)
    plain = times["plain loop"]
    ratios = {name: statistics.median(t / p for t, p in zip(values, plain)) for name, values in times.items()}
    return {name: statistics.median(values) for name, values in times.items()}, ratios


def main():
    import warnings

    warnings.filterwarnings("ignore", message="Anomaly Detection has been enabled")
    torch.set_num_threads(1)  # one core: stable timings on a shared machine
    print(f"torch {torch.__version__}, CPU, 1 thread; process CPU time, {ROUNDS} interleaved rounds of "
          f"{STEPS_PER_ROUND} steps, ratio = median of per-round ratios")
    print()
    print("| model | variant | CPU ms / step | ratio to plain |")
    print("|---|---|---|---|")
    for label, (make_model, shape) in MODELS.items():
        medians, ratios = measure(make_model, shape)
        for name in VARIANTS:
            print(f"| {label} | {name} | {1e3 * medians[name]:.2f} | {ratios[name]:.3f}x |")


if __name__ == "__main__":
    main()
