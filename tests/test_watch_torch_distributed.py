"""nanlab.watch under torch.distributed: 2 processes, DistributedDataParallel over gloo on CPU, one rank's batch goes
bad (a non-finite input, an out-of-range label, a non-finite loss whose gradients are finite; plain, under
no_sync() accumulation, and with a GradScaler). Every rank stops, skips or raises at the same step with the same
report naming that rank, with no hang and no transport crash; a healthy step runs no collective of the watch's and
trains bit-identically to DDP without the watch."""
import json
import socket
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

WORKER = textwrap.dedent('''
    import json, logging, os, sys
    from contextlib import nullcontext
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    from torch import nn
    from torch.nn import functional as F
    import nanlab

    PHASES = ("plain", "healthy", "data", "labels", "loss", "accumulated", "scaler-skip", "stop", "forward-loss")
    COLLECTIVES = []  # the Python-level collectives the watch runs (DDP's own reduction runs in C++, not counted)

    class CapturedLog(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    def counted(name):
        real = getattr(dist, name)

        def collective(*args, **kwargs):
            COLLECTIVES.append(name)
            return real(*args, **kwargs)
        return collective

    def worker(rank, world, port, out, bad_rank, bad_step):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world)
        for name in ("all_reduce", "all_gather", "all_gather_object", "broadcast", "barrier"):
            setattr(dist, name, counted(name))
        results = {phase: train(rank, bad_rank, bad_step, phase) for phase in PHASES}
        dist.barrier()  # both ranks done before gloo is torn down (see ddp_hunt.py: otherwise a rank may abort)
        dist.destroy_process_group()
        with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
            json.dump(results, handle)

    def penalised(output, target, penalty):
        # a loss term without gradient: a non-finite one leaves the gradients finite
        return F.cross_entropy(output, target) + penalty

    class LossInForward(nn.Module):
        """Hugging Face style: the model returns its loss (no loss_fn for the watch to fold a flag into)."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, y, penalty):
            return penalised(self.net(x), y, penalty)

    def corrupt(phase, x, y, penalty):
        if phase in ("data", "stop"):
            x[5, 2] = float("inf")
        elif phase in ("loss", "forward-loss"):
            penalty.fill_(float("inf"))
        elif phase in ("labels", "accumulated", "scaler-skip"):
            y[5] = 9  # out of range for 3 classes

    def train(rank, bad_rank, bad_step, phase):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        in_forward = phase == "forward-loss"
        model = nn.parallel.DistributedDataParallel(LossInForward(net) if in_forward else net)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu") if phase == "scaler-skip" else None
        policy = {"scaler-skip": "skip", "stop": "stop"}.get(phase, "raise")
        watch = None if phase == "plain" else nanlab.watch(model, optimizer, None if in_forward else penalised,
                                                             scaler=scaler, on_nonfinite=policy)
        loss_fn = penalised if watch is None else watch.loss_fn
        warnings = CapturedLog()
        logging.getLogger("nanlab.watch").addHandler(warnings)
        micro_batches = 2 if phase == "accumulated" else 1
        generator = torch.Generator().manual_seed(rank)
        result = {"rank": rank, "raised": False, "report": None, "losses": []}
        COLLECTIVES.clear()
        try:
            with watch or nullcontext():
                for step in range(6):
                    optimizer.zero_grad()
                    for index in range(micro_batches):
                        x = torch.randn(8, 4, generator=generator)
                        y = torch.randint(0, 3, (8,), generator=generator)
                        penalty = torch.zeros(())
                        if (rank, step, index) == (bad_rank, bad_step, 0):
                            corrupt(phase, x, y, penalty)
                        # gradient accumulation: only the last micro-batch's backward reduces across ranks
                        with model.no_sync() if index < micro_batches - 1 else nullcontext():
                            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                                loss = model(x, y, penalty) if in_forward else loss_fn(model(x), y, penalty)
                            (scaler.scale(loss) if scaler else loss).backward()
                    if scaler:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    result["losses"].append(loss.item())
                    if watch is not None and watch.stopped:
                        break
        except nanlab.NonFiniteError as error:
            result.update(raised=True)
        if watch is not None:
            result.update(steps=watch.step, stopped=watch.stopped, skipped=watch.history.skipped_steps,
                          watched_losses=watch.history.losses,
                          report=watch.report.to_dict() if watch.report else None)
        result["weights"] = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
        result["collectives"] = list(COLLECTIVES)
        result["warnings"] = warnings.messages
        logging.getLogger("nanlab.watch").removeHandler(warnings)
        return result

    if __name__ == "__main__":
        port, out, bad_rank, bad_step = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        mp.spawn(worker, args=(2, port, out, bad_rank, bad_step), nprocs=2)
''')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_two_ranks(tmp_path, bad_rank, bad_step):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    child = subprocess.run([sys.executable, str(script), str(free_port()), str(tmp_path), str(bad_rank),
                            str(bad_step)], capture_output=True, text=True, timeout=180)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "Connection closed by peer" not in child.stderr
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both ranks' results for every phase of the worker, rank 1's batch at step 3 going bad (one 2-process run)."""
    return run_two_ranks(tmp_path_factory.mktemp("ddp"), bad_rank=1, bad_step=3)


def test_every_rank_stops_at_the_same_step_with_the_bad_ranks_report(ranks):
    rank0, rank1 = ranks
    for phase in ("data", "labels", "accumulated"):
        for result in (rank0[phase], rank1[phase]):
            report = result["report"]
            assert result["raised"] and result["steps"] == 3, phase
            assert (report["step"], report["phase"], report["rank"], report["ranks"]) == (3, "data", 1, [1]), phase
            assert report["samples"] == [5], phase
        assert rank0[phase]["report"] == rank1[phase]["report"], phase
    assert "label 9" in rank0["labels"]["report"]["label_problem"]
    assert "non-finite values in samples 5" in rank0["data"]["report"]["data_findings"]
    # accumulation: the bad label sat in the first micro-batch, whose backward ran under no_sync()
    assert rank0["accumulated"]["report"]["micro_batch"] == 0


def test_a_non_finite_loss_with_finite_gradients_stops_every_rank(ranks):
    # The loss term without gradient leaves rank 1's gradients finite: only the NaN flag that watch.loss_fn folds
    # into the loss carries the fault into DDP's reduction, so that rank 0 stops with it.
    rank0, rank1 = ranks
    for result in (rank0["loss"], rank1["loss"]):
        assert result["raised"] and result["steps"] == 3
        assert (result["report"]["step"], result["report"]["rank"], result["report"]["ranks"]) == (3, 1, [1])
    assert rank0["loss"]["report"] == rank1["loss"]["report"]
    assert rank1["loss"]["report"]["phase"] == "loss"


def test_a_healthy_step_runs_no_collective_and_training_is_bit_identical(ranks):
    for result in ranks:
        healthy, plain = result["healthy"], result["plain"]
        assert not healthy["raised"] and healthy["steps"] == 6 and healthy["report"] is None
        assert healthy["collectives"] == []
        assert healthy["weights"] == plain["weights"] and healthy["losses"] == plain["losses"]
        assert healthy["watched_losses"] == plain["losses"]
        # a bad step: one all_reduce for the status, then the reports gathered
        assert result["data"]["collectives"].count("all_reduce") == 1
        assert "all_gather_object" in result["data"]["collectives"]


def test_skip_and_stop_take_the_same_decision_on_every_rank(ranks):
    rank0, rank1 = ranks
    # GradScaler under DDP, a bad label on rank 1: every rank's scaler skips that update, training goes on together
    for result in (rank0["scaler-skip"], rank1["scaler-skip"]):
        assert not result["raised"] and result["steps"] == 6 and result["skipped"] == [3]
        assert (result["report"]["rank"], result["report"]["phase"]) == (1, "data")
    assert rank0["scaler-skip"]["weights"] == rank1["scaler-skip"]["weights"]
    for result in (rank0["stop"], rank1["stop"]):
        assert result["stopped"] and not result["raised"] and len(result["losses"]) == 4
        assert (result["report"]["step"], result["report"]["rank"], result["report"]["samples"]) == (3, 1, [5])
    assert rank0["stop"]["weights"] == rank1["stop"]["weights"]


def test_a_loss_computed_inside_forward_is_decided_on_the_gradients_and_warned_about(ranks):
    # Hugging Face style under DDP: no loss_fn, so no flag. Rank 1's loss alone is non-finite at step 3 and the
    # reduced gradients stay finite: no rank stops (none could alone without leaving the other in DDP's next
    # reduction), rank 1 logs it, and the ranks stay in step.
    rank0, rank1 = ranks
    for result in (rank0["forward-loss"], rank1["forward-loss"]):
        assert not result["raised"] and result["steps"] == 6 and result["report"] is None
        assert result["collectives"] == []
    assert rank0["forward-loss"]["warnings"] == []
    (warning,) = rank1["forward-loss"]["warnings"]
    assert "at step 3 rank 1's loss is inf" in warning and "watch.loss_fn" in warning
    assert rank0["forward-loss"]["weights"] == rank1["forward-loss"]["weights"]
