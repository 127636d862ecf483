"""nanlab.watch(trainer) for a Lightning Trainer under DDP as a Lightning user launches it: ``python train.py`` with
``Trainer(accelerator="cpu", devices=2, strategy="ddp")`` (Lightning starts the second process itself, re-running the
script) or ``strategy="ddp_spawn"``.

One sample, on one rank's shard, is a sensor stuck at one reading (tests/test_host_lightning.py): the square root of
its zero variance has an infinite derivative, so that rank's gradients go NaN and DDP's reduction spreads them. Every
rank must stop at the same step with the same policy outcome and report, the weights from before the bad step, and
every process must exit cleanly: no hang, no SIGABRT from gloo's teardown (issue 16 point 9).
"""
import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")
if not torch.distributed.is_available():
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

SCRIPT = '''
"""Train a small sensor classifier with Lightning on two CPU processes:

    python train.py OUT POLICY STRATEGY

POLICY is nanlab.watch's on_nonfinite ("raise", "stop", "skip"), STRATEGY "ddp" or "ddp_spawn". Sample 26 is a
sensor stuck at one reading.
"""
import hashlib
import json
import os
import sys

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import nanlab

out, policy, strategy = sys.argv[1], sys.argv[2], sys.argv[3]


class SensorClassifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.per_step = nn.Linear(3, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.per_step(x)
        centred = h - h.mean(dim=1, keepdim=True)
        return self.head(torch.sqrt((centred * centred).mean(dim=1)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fingerprint(module):
    digest = hashlib.sha256()
    for p in module.parameters():
        digest.update(p.detach().numpy().tobytes())
    return digest.hexdigest()


class Outcome(L.Callback):
    """Each rank writes what happened when training ends or fails, with its weights' fingerprint after each step."""

    def __init__(self, watch):
        self.watch, self.fingerprints = watch, []

    def on_train_start(self, trainer, pl_module):
        self.fingerprints.append(fingerprint(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.fingerprints.append(fingerprint(pl_module))

    def write(self, trainer, pl_module, raised):
        watch = next(c for c in trainer.callbacks if isinstance(c, type(self.watch)))  # ddp_spawn: this rank's copy
        report = watch.report
        result = {"raised": raised, "stopped": watch.stopped, "step": watch.step,
                  "skipped": watch.history.skipped_steps, "global_step": trainer.global_step,
                  "fingerprints": self.fingerprints, "final": fingerprint(pl_module),
                  "finite": all(bool(torch.isfinite(p).all()) for p in pl_module.parameters()),
                  "report": report.to_dict() if report else None}
        with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as handle:
            json.dump(result, handle)

    def on_train_end(self, trainer, pl_module):
        self.write(trainer, pl_module, raised=False)

    def on_exception(self, trainer, pl_module, exception):
        self.write(trainer, pl_module, raised=isinstance(exception, nanlab.NonFiniteError))


if __name__ == "__main__":
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 5, 3, generator=generator), torch.randint(0, 2, (128,), generator=generator)
    x[26] = x[26, 0]  # the stuck sensor
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    torch.manual_seed(0)
    model = SensorClassifier()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=6, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    watch = nanlab.watch(trainer, on_nonfinite=policy)
    trainer.callbacks.append(Outcome(watch))
    trainer.fit(model, loader)
'''
BAD_STEP = 2  # as in test_host_lightning.py's DDP test (the same data sharded the same way)


def launch(tmp_path, policy, strategy):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    child = subprocess.run([sys.executable, str(script), str(tmp_path), policy, strategy], capture_output=True,
                           text=True, timeout=180, env=env, cwd=tmp_path)
    for sign in ("terminate called", "SIGABRT", "Signal 6", "Connection closed by peer", "Aborted"):
        assert sign not in child.stderr, child.stderr[-3000:]
    return child, [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def same_outcome(ranks):
    rank0, rank1 = ranks
    assert rank0["report"] == rank1["report"] and rank0["final"] == rank1["final"], ranks
    report = rank0["report"]
    assert (report["step"], report["cause"], report["ranks"], report["rank"]) == (BAD_STEP, "sqrt-at-zero", [0], 0)
    for result in ranks:
        assert result["finite"]
        assert result["final"] == result["fingerprints"][BAD_STEP], "the bad step's update was not applied"


def test_raise_ends_every_rank_at_the_same_step(tmp_path):
    child, ranks = launch(tmp_path, "raise", "ddp")
    assert child.returncode == 1 and "NonFiniteError" in child.stderr, child.stderr[-3000:]
    assert all(result["raised"] and not result["stopped"] and result["step"] == BAD_STEP for result in ranks)
    same_outcome(ranks)


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_stop_ends_every_rank_at_the_same_step(tmp_path, strategy):
    child, ranks = launch(tmp_path, "stop", strategy)
    assert child.returncode == 0, child.stderr[-3000:]
    assert all(result["stopped"] and not result["raised"] and result["skipped"] == [BAD_STEP] for result in ranks)
    same_outcome(ranks)
