"""nanlab.watch in an Accelerate loop under DDP, launched as a user launches it: ``accelerate launch --multi_gpu
--num_processes 2 train.py`` with ``Accelerator(cpu=True)``, which gives two CPU processes over gloo
(``DistributedType.MULTI_CPU``; accelerate's multi-CPU config otherwise goes through mpirun).

The loop is tests/test_host_accelerate.py's (prepared model, optimizer and loader, ``accelerator.accumulate`` over
2 micro-batches, ``accelerator.backward``, ``clip_grad_norm_``), the watch ``nanlab.watch(model, optimizer,
loss_fn)``. Row 45 is a corrupt record: the prepared loader deals the loader's batches of 8 out in turn (rank 0 the
even ones, rank 1 the odd), so batch 5 is rank 1's third micro-batch, the first of its update 1, a micro-batch under
``no_sync``: its NaN waits in rank 1's accumulated gradients until the synchronising micro-batch, whose reduction
hands it to rank 0. Every rank must then raise (or skip) at the same update with rank 1's report, and every process
exits cleanly (no SIGABRT, no lost peer).

Unlike the Trainer's (tests/test_host_ddp_transformers.py), this loop's gloo threads outlive
``destroy_process_group()`` whether or not the watch is on: measured, 3 per rank after a plain run alone with no
ProcessGroup or DDP object left in Python; a bare torch script that wraps a model in ``DistributedDataParallel``,
returns and destroys the group keeps them too (the group is held on the C++ side), so no thread count is asserted.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
if not torch.distributed.is_available():
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

SCRIPT = '''
"""Train a small regressor with Accelerate on every process the launcher starts:

    accelerate launch --multi_gpu --num_processes 2 train.py OUT RUN [RUN ...]

RUN is "plain" (no watch) or a policy of nanlab.watch ("raise", "skip"); row 45 holds a NaN.
"""
import contextlib
import hashlib
import json
import math
import os
import sys

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from torch import nn
from torch.nn import functional as F

import nanlab

out, runs = sys.argv[1], sys.argv[2:]


def rows(n=128, nan_at=45):
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 4, generator=generator), torch.randn(n, 1, generator=generator)
    x[nan_at, 2] = math.nan
    return torch.utils.data.TensorDataset(x, y)


def fingerprint(model):
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().numpy().tobytes())
    return digest.hexdigest()


def train(run):
    accelerator = Accelerator(gradient_accumulation_steps=2, cpu=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loader = torch.utils.data.DataLoader(rows(), batch_size=8)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    watch = None if run == "plain" else nanlab.watch(model, optimizer, F.mse_loss, on_nonfinite=run)
    result = {"rank": accelerator.process_index, "raised": False, "distributed": str(accelerator.distributed_type),
              "losses": [],
              "fingerprints": [fingerprint(model)]}
    try:
        with watch or contextlib.nullcontext():
            loss_fn = watch.loss_fn if watch is not None else F.mse_loss
            for x, y in loader:
                with accelerator.accumulate(model):
                    loss = loss_fn(model(x), y)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), 1.0)
                    optimizer.step()
                    optimizer.zero_grad()
                result["losses"].append(loss.item())
                if accelerator.sync_gradients:
                    result["fingerprints"].append(fingerprint(model))
    except nanlab.NonFiniteError:
        result["raised"] = True
    result.update(final=fingerprint(model), finite=all(bool(torch.isfinite(p).all()) for p in model.parameters()))
    if watch is not None:
        result.update(step=watch.step, skipped=watch.history.skipped_steps,
                      report=watch.report.to_dict() if watch.report else None)
    return result


def main():
    for run in runs:
        result = train(run)
        with open(os.path.join(out, f"{run}-rank{result['rank']}.json"), "w") as handle:
            json.dump(result, handle)


main()
PartialState().wait_for_everyone()  # every rank done before gloo is torn down, as tests/test_watch_torch_distributed.py
PartialState().destroy_process_group()  # as accelerate's docs end a script (Accelerator.end_training does this)
'''

RUNS = ("plain", "raise", "skip")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run's result on each rank, from one launch: {run: [rank 0, rank 1]}."""
    folder = tmp_path_factory.mktemp("ddp_accelerate")
    (folder / "train.py").write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = str(pathlib.Path(sys.executable).with_name("accelerate"))  # the console script a user types
    child = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2",
                            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                            str(folder / "train.py"), str(folder), *RUNS],
                           capture_output=True, text=True, timeout=240, env=env, cwd=folder, stdin=subprocess.DEVNULL)
    assert child.returncode == 0, child.stderr[-3000:]
    for sign in ("terminate called", "SIGABRT", "Signal 6", "Connection closed by peer", "Aborted"):
        assert sign not in child.stderr, child.stderr[-3000:]
    return {name: [json.loads((folder / f"{name}-rank{rank}.json").read_text()) for rank in (0, 1)]
            for name in RUNS}


BAD_UPDATE = 1  # rank 1's micro-batches 2 and 3 (the loader's batches 5 and 7) make its update 1


def test_the_launch_is_data_parallel_on_the_cpu_and_without_the_watch_both_ranks_apply_the_nan(runs):
    rank0, rank1 = runs["plain"]
    assert rank0["distributed"] == rank1["distributed"] == "DistributedType.MULTI_CPU"
    nan_losses = [[i for i, loss in enumerate(result["losses"]) if loss != loss] for result in (rank0, rank1)]
    # rank 1 meets the record in its micro-batch 2; rank 0's losses turn NaN only after the NaN update (from 4 on)
    assert nan_losses[1][0] == 2 and nan_losses[0][0] == 4, nan_losses
    assert not rank0["finite"] and not rank1["finite"] and rank0["final"] == rank1["final"]


def test_raise_on_every_rank_at_the_same_update_with_the_weights_from_before_it(runs):
    plain = runs["plain"][0]["fingerprints"]
    for result in runs["raise"]:
        assert result["raised"] and result["step"] == BAD_UPDATE and result["finite"], result
        assert result["final"] == plain[BAD_UPDATE], "the weights after update 0, as without the watch"
    report = runs["raise"][0]["report"]
    assert report == runs["raise"][1]["report"], "one report on every rank"
    assert (report["step"], report["phase"], report["micro_batch"], report["samples"]) == (BAD_UPDATE, "data", 0, [5])
    assert (report["rank"], report["ranks"]) == (1, [1])


def test_skip_drops_the_update_on_every_rank_and_both_train_on_alike(runs):
    rank0, rank1 = runs["skip"]
    for result in (rank0, rank1):
        assert not result["raised"] and result["skipped"] == [BAD_UPDATE] and result["finite"]
    assert rank0["final"] == rank1["final"] and rank0["fingerprints"] == rank1["fingerprints"]
