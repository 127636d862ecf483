"""Per-step cost of watching PyTorch training for NaN, as ratios to the plain loop, measured in one run.

    python benchmarks/bench_torch.py            # every model, the GradScaler variant and 2-rank DDP
    python benchmarks/bench_torch.py --quick    # fewer rounds
    python benchmarks/bench_torch.py --device cuda   # on a GPU (no DDP row; each round ends in a device sync)

Models: a small CNN, an RNN, a small transformer block; the CNN again under float16 autocast with a GradScaler; and
a 2-rank DistributedDataParallel run over gloo (the watch adds no collective on a healthy step: it reads the
gradients DDP has reduced).
Variants: the plain loop; nanlab.watch; and, as anchors, torch.autograd.detect_anomaly and a forward hook on every
module that checks ``isfinite`` (the usual hand-rolled NaN hunt). Variants are timed in interleaved rounds (the
order rotates every round), each round measuring wall-clock (``time.perf_counter``) and process CPU time
(``time.process_time``); a variant's ratio is the median over rounds of (its time / the plain loop's time in the
same round), so the machine's load drifting between rounds cancels out. The last column gives the quartiles of the
per-round wall-clock ratios: the noise a ratio should be read against (dropout's random masks and the machine make
single rounds differ by several percent).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import warnings

import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F

import nanlab

THREADS = 2
ANCHORS = ("torch.autograd.detect_anomaly", "isfinite hook on every module")


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


class TransformerBlock(nn.Module):
    """One pre-norm encoder block (d_model 128, 4 heads, feed-forward 512) over 64 token embeddings, mean-pooled."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(1000, 128)
        self.block = nn.TransformerEncoderLayer(128, 4, 512, batch_first=True, norm_first=True, dropout=0.1)
        self.head = nn.Linear(128, 10)

    def forward(self, tokens):
        return self.head(self.block(self.embed(tokens)).mean(dim=1))


MODELS = {
    "small CNN (2 conv + linear, 64 x 1x28x28)": (SmallCNN, lambda: torch.randn(64, 1, 28, 28)),
    "RNN (tanh, 128 units, 64 x 50 steps x 16)": (SmallRNN, lambda: torch.randn(64, 50, 16)),
    "transformer block (d 128, 4 heads, 32 x 64 tokens)": (TransformerBlock, lambda: torch.randint(0, 1000, (32, 64))),
}
AMP_MODEL = "small CNN, float16 autocast + GradScaler"


class Trainer:
    """One model, optimizer and batch, trained under each variant in turn."""

    def __init__(self, make_model, make_input, amp=False, device="cpu"):
        torch.manual_seed(0)
        self.device = device
        self.model = make_model().to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.x = make_input().to(device)
        self.y = torch.randint(0, 10, (self.x.shape[0],)).to(device)
        self.scaler = torch.amp.GradScaler(device) if amp else None

    def run(self, variant: str, steps: int) -> None:
        loss_fn, hooks, context = F.cross_entropy, [], contextlib.nullcontext()
        if variant == "nanlab.watch":
            context = nanlab.watch(self.model, self.optimizer, F.cross_entropy, scaler=self.scaler)
            loss_fn = context.loss_fn
        elif variant == "torch.autograd.detect_anomaly":
            context = torch.autograd.detect_anomaly(check_nan=True)
        elif variant == "isfinite hook on every module":
            hooks = [module.register_forward_hook(_check_output) for module in self.model.modules()]
        with context:
            for _ in range(steps):
                self.optimizer.zero_grad()
                if self.scaler is None:
                    loss_fn(self.model(self.x), self.y).backward()
                    self.optimizer.step()
                else:
                    with torch.autocast(self.device, dtype=torch.float16):
                        loss = loss_fn(self.model(self.x), self.y)
                    self.scaler.scale(loss).backward()
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
        for hook in hooks:
            hook.remove()
        if self.device == "cuda":
            torch.cuda.synchronize()  # the round's time includes the kernels it queued, for every variant alike


def _check_output(module, args, output):
    if isinstance(output, torch.Tensor) and not torch.isfinite(output).all():
        raise FloatingPointError(f"non-finite output in {type(module).__name__}")


def interleaved(run, variants, rounds: int, steps: int, warmup: int) -> dict[str, dict[str, float]]:
    """Per variant: median wall and CPU ms per step, and median per-round ratios to the first variant."""
    for variant in variants:
        run(variant, warmup)
    wall = {variant: [] for variant in variants}
    cpu = {variant: [] for variant in variants}
    for round_number in range(rounds):
        shift = round_number % len(variants)  # rotate the order, so that no variant always runs first
        for variant in variants[shift:] + variants[:shift]:
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            run(variant, steps)
            wall[variant].append((time.perf_counter() - wall_start) / steps)
            cpu[variant].append((time.process_time() - cpu_start) / steps)
    base = variants[0]
    results = {}
    for variant in variants:
        wall_ratios = [t / p for t, p in zip(wall[variant], wall[base])]
        quartiles = statistics.quantiles(wall_ratios, n=4)
        results[variant] = {
            "wall_ms": 1e3 * statistics.median(wall[variant]), "cpu_ms": 1e3 * statistics.median(cpu[variant]),
            "wall_ratio": statistics.median(wall_ratios), "wall_spread": (quartiles[0], quartiles[2]),
            "cpu_ratio": statistics.median(t / p for t, p in zip(cpu[variant], cpu[base])),
        }
    return results


# -- 2-rank DDP over gloo ------------------------------------------------------------------------------------------
def _ddp_worker(rank, world, port, rounds, steps, warmup, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two ranks share the two threads
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    trainer = Trainer(SmallCNN, lambda: torch.randn(32, 1, 28, 28))
    trainer.model = nn.parallel.DistributedDataParallel(trainer.model)
    result = interleaved(trainer.run, ("plain loop", "nanlab.watch"), rounds, steps, warmup)
    # Without a barrier, a rank that tears gloo down while the other is still finishing aborts now and then
    # (std::terminate, SIGABRT; measured with plain DDP and no nanlab: 3 of 12 runs, 0 of 12 with the barrier).
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(result, handle)


def ddp(rounds: int, steps: int, warmup: int) -> dict[str, dict[str, float]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "rank0.json")
        mp.spawn(_ddp_worker, args=(2, port, rounds, steps, warmup, out), nprocs=2)
        with open(out) as handle:
            return json.load(handle)


def table_rows(label: str, result: dict[str, dict[str, float]]) -> list[str]:
    return [f"| {label} | {variant} | {r['wall_ms']:.2f} | {r['wall_ratio']:.3f}x | {r['cpu_ms']:.2f} | "
            f"{r['cpu_ratio']:.3f}x | {r['wall_spread'][0]:.3f}-{r['wall_spread'][1]:.3f} |"
            for variant, r in result.items()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run; noisier ratios)")
    parser.add_argument("--rounds", type=int, default=41, help="interleaved rounds per model (default 41)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the models train")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "bench_torch: --device cuda, but torch sees no CUDA GPU here\n")
    # 20 steps a round: a round of 5 small-CNN steps lasts ~30 ms, where one scheduler hiccup moves a ratio by
    # several percent (two full runs of 5-step rounds read the CNN at 1.034x and 1.062x).
    rounds, steps, warmup = (6, 3, 2) if args.quick else (args.rounds, 20, 5)
    warnings.filterwarnings("ignore", message="Anomaly Detection has been enabled")
    torch.set_num_threads(THREADS)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {where}, {THREADS} threads (DDP: 2 ranks x 1 thread, gloo); {rounds} "
          f"interleaved rounds of {steps} steps ({3 * rounds} for DDP); ratio = median of per-round ratios to the "
          "plain loop; last column: the quartiles of the per-round wall-clock ratios")
    print()
    print("| model | variant | wall ms / step | wall ratio | CPU ms / step | CPU ratio "
          "| wall ratio, middle half of rounds |")
    print("|---|---|---|---|---|---|---|")
    for label, (make_model, make_input) in MODELS.items():
        trainer = Trainer(make_model, make_input, device=args.device)
        variants = ("plain loop", "nanlab.watch") + (ANCHORS if "CNN" in label or "RNN" in label else ())
        print("\n".join(table_rows(label, interleaved(trainer.run, variants, rounds, steps, warmup))), flush=True)
    trainer = Trainer(SmallCNN, lambda: torch.randn(64, 1, 28, 28), amp=True, device=args.device)
    print("\n".join(table_rows(AMP_MODEL, interleaved(trainer.run, ("plain loop", "nanlab.watch"), rounds, steps,
                                                      warmup))), flush=True)
    # Three times the rounds for DDP: two processes meeting in every step's all-reduce make single rounds differ by
    # +-20% (the middle half of 81 rounds spans 0.91-1.21), so the median needs more of them to settle.
    if args.device == "cpu":
        print("\n".join(table_rows("2-rank DDP small CNN (32 per rank, rank 0's clock)",
                                   ddp(3 * rounds, steps, warmup))))
    print(f"\n(command: python {' '.join(sys.argv)})")


if __name__ == "__main__":
    main()
