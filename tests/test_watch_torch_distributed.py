"""nanlab.watch under torch.distributed: 2 processes, DistributedDataParallel over gloo on CPU, one rank's batch goes
bad. Every rank stops at the same step with the same report naming that rank, with no hang and no transport crash."""
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
    import json, os, sys
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    from torch import nn
    from torch.nn import functional as F
    import nanlab

    def worker(rank, world, port, out, bad_rank, bad_step):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world)
        results = [train(rank, bad_rank, bad_step, phase) for phase in ("data", "labels")]
        dist.destroy_process_group()
        with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
            json.dump(results, handle)

    def train(rank, bad_rank, bad_step, phase):
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(
            nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        generator = torch.Generator().manual_seed(rank)
        result = {"rank": rank, "raised": False}
        watch = nanlab.watch(model, optimizer, F.cross_entropy)
        try:
            with watch:
                for step in range(6):
                    x = torch.randn(8, 4, generator=generator)
                    y = torch.randint(0, 3, (8,), generator=generator)
                    if rank == bad_rank and step == bad_step:
                        if phase == "data":
                            x[5, 2] = float("inf")
                        else:
                            y[5] = 9  # out of range for 3 classes
                    optimizer.zero_grad()
                    watch.loss_fn(model(x), y).backward()
                    optimizer.step()
        except nanlab.NonFiniteError as error:
            result.update(raised=True, report=error.report.to_dict())
        result["steps"] = watch.step
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
    for _ in range(2):
        child = subprocess.run([sys.executable, str(script), str(free_port()), str(tmp_path), str(bad_rank),
                                str(bad_step)], capture_output=True, text=True, timeout=180)
        # Seen once in three full runs on 2 loaded cores: a gloo thread calls std::terminate as a rank tears down
        # ("terminate called without an active exception", SIGABRT). That is the transport's shutdown, not the
        # watch's verdict, so the two ranks run once more; any other failure fails at once.
        if "terminate called without an active exception" not in child.stderr:
            break
    assert child.returncode == 0, child.stderr[-2000:]
    assert "Connection closed by peer" not in child.stderr
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]


def test_every_rank_stops_at_the_same_step_with_the_bad_ranks_report(tmp_path):
    rank0, rank1 = run_two_ranks(tmp_path, bad_rank=1, bad_step=3)
    for phase, results in zip(("data", "labels"), zip(rank0, rank1)):
        for result in results:
            report = result["report"]
            assert result["raised"] and result["steps"] == 3, phase
            assert (report["step"], report["phase"], report["rank"], report["ranks"]) == (3, "data", 1, [1])
            assert report["samples"] == [5]
        assert results[0]["report"] == results[1]["report"]
    assert "label 9" in rank0[1]["report"]["label_problem"]
    assert "non-finite values in samples 5" in rank0[0]["report"]["data_findings"]
