"""Two ranks of DistributedDataParallel over gloo on the CPU, one of which reads a corrupt record (an inf).

Run by notebooks/pytorch/90-hunt-your-own-nan.ipynb as a subprocess: ``python ddp_hunt.py OUT_DIR``. Each rank
trains twice from the same weights, once without and once with ``nanlab.watch``, and writes what it saw to
``OUT_DIR/rank<N>.json``: its losses without the watch, the dataset rows of every batch it read, the step it
stopped at and the watch's report.
"""
import json
import os
import socket
import sys
from contextlib import nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import nanlab

WORLD_SIZE = 2
NUM_ROWS, FEATURES, CLASSES, BATCH = 256, 8, 3, 16  # BATCH rows per rank per step
STEPS = 8
CORRUPT_ROW = 77  # a record that a broken export wrote as inf


def make_dataset() -> TensorDataset:
    """The same rows on every rank (one seed); DistributedSampler decides which rank reads which."""
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, CLASSES, (NUM_ROWS,), generator=generator)
    x = torch.randn(CLASSES, FEATURES, generator=generator)[y] + torch.randn(NUM_ROWS, FEATURES, generator=generator)
    x[CORRUPT_ROW, 2] = float("inf")
    return TensorDataset(x, y, torch.arange(NUM_ROWS))


def train(rank: int, dataset: TensorDataset, watched: bool) -> dict:
    torch.manual_seed(0)  # the same initial weights on every rank, as DDP expects
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(),
                                                              nn.Linear(16, CLASSES)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sampler = DistributedSampler(dataset, num_replicas=WORLD_SIZE, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler)
    result = {"rank": rank, "losses": [], "rows": [], "report": None}
    watch = nanlab.watch(model, optimizer, F.cross_entropy) if watched else None
    loss_fn = watch.loss_fn if watched else F.cross_entropy
    try:
        with watch or nullcontext():
            for _, (x, y, rows) in zip(range(STEPS), loader):
                result["rows"].append(rows.tolist())
                optimizer.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()  # DDP averages the gradients of both ranks here
                optimizer.step()
                result["losses"].append(loss.item())
    except nanlab.NonFiniteError as error:
        result["report"] = error.report.to_dict()
    if watched:
        result["stopped_at"] = watch.step
    return result


def run_rank(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60))
    dataset = make_dataset()
    results = {"plain": train(rank, dataset, watched=False), "watched": train(rank, dataset, watched=True)}
    # Both ranks finish before gloo is torn down: without this barrier a rank aborts now and then as it exits
    # ("terminate called without an active exception"; torch 2.13, plain DDP too: 3 of 12 runs, 0 of 12 with it).
    dist.barrier()
    dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(results, handle)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    # fork: the ranks inherit this process's imports instead of importing torch again (CUDA needs "spawn")
    mp.start_processes(run_rank, args=(free_port(), sys.argv[1]), nprocs=WORLD_SIZE, start_method="fork")
