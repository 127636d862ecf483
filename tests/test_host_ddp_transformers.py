"""nanlab.watch(trainer) for a Transformers Trainer under DDP, launched as a user launches it:
``torchrun --nproc_per_node 2 train.py`` on the CPU (gloo), a tiny Llama built from its config (HF_HUB_OFFLINE=1).

One sample of the data carries a token whose embedding is broken (a forward hook divides its rows by zero, as in
tests/test_host_transformers.py): it lands in one rank's batch only. With ``train_sampling_strategy="sequential"``
accelerate deals the batches of 4 out in turn, rank 0 the even ones, rank 1 the odd: sample 21 is the second sample
of batch 5, rank 1's third, so the Trainer's step 3 (the watch counts from 0: its step 2) goes bad on rank 1 only.
DDP's reduction spreads that rank's NaN gradients to every rank; the watch must then stop every rank at the same
step, with the same policy outcome and the same report (naming the rank where it appeared), the weights from before
the bad step, and every process must exit cleanly: no hang, no SIGABRT from gloo's teardown (issue 16 point 9). The
script ends as PyTorch's DDP tutorial does, training in main() and then destroying the process group, which stops
gloo's threads only if nothing keeps the group alive; the watch must not (see the last test).
"""
import json
import math
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
if not torch.distributed.is_available():
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

SCRIPT = '''
"""Fine-tune a tiny Llama with the Trainer on every process torchrun starts:

    torchrun --nproc_per_node 2 train.py OUT RUN [RUN ...]

Each RUN trains a fresh model: "plain" (no watch); "raise", "stop", "skip" (nanlab.watch(trainer, on_nonfinite=RUN));
"callback-raise" (Trainer(callbacks=[WatchCallback()])); "raise-uncaught" (the NonFiniteError ends the script).
Sample 21 carries token 63, whose embedding a bad vocabulary resize left broken.
"""
import hashlib
import json
import os
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

import nanlab
from nanlab.frameworks.torch.hosts.transformers import WatchCallback

out, runs = sys.argv[1], sys.argv[2:]
rank = int(os.environ["RANK"])
BROKEN_TOKEN = 63


def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    model.get_input_embeddings().register_forward_hook(
        lambda module, args, out: out / (args[0] != BROKEN_TOKEN).unsqueeze(-1))
    return model


def samples(n=64):
    data = []
    for i in range(n):
        ids = torch.randint(0, BROKEN_TOKEN, (16,), generator=torch.Generator().manual_seed(i))
        if i == 21:
            ids[5] = BROKEN_TOKEN
        data.append({"input_ids": ids, "labels": ids.clone()})
    return data


def fingerprint(model):
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().numpy().tobytes())
    return digest.hexdigest()


class Progress(TrainerCallback):
    """The logged gradient norm of each step and the weights' fingerprint after it (0: before training)."""

    def __init__(self):
        self.grad_norms, self.fingerprints = {}, {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.fingerprints[0] = fingerprint(model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "grad_norm" in logs:
            self.grad_norms[state.global_step] = logs["grad_norm"]

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.fingerprints[state.global_step] = fingerprint(model)


def main():
    for run in runs:
        model = tiny_llama()
        progress = Progress()
        callbacks = [progress, WatchCallback()] if run == "callback-raise" else [progress]
        args = TrainingArguments(output_dir=os.path.join(out, "checkpoints"), per_device_train_batch_size=4,
                                 max_steps=6, learning_rate=1e-3, lr_scheduler_type="constant", logging_steps=1,
                                 report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0,
                                 train_sampling_strategy="sequential")
        trainer = Trainer(model=model, args=args, train_dataset=samples(), callbacks=callbacks)
        if run == "callback-raise":
            watch = callbacks[1]
        else:
            watch = None if run == "plain" else nanlab.watch(trainer, on_nonfinite=run.split("-")[0])
        if run == "raise-uncaught":
            trainer.train()
        result = {"raised": False}
        try:
            trainer.train()
        except nanlab.NonFiniteError:
            result["raised"] = True
        result.update(global_step=trainer.state.global_step, grad_norms=progress.grad_norms,
                      fingerprints=progress.fingerprints, final=fingerprint(model),
                      finite=all(bool(torch.isfinite(p).all()) for p in model.parameters()))
        if watch is not None:
            result.update(step=watch.step, stopped=watch.stopped, skipped=watch.history.skipped_steps,
                          report=watch.report.to_dict() if watch.report else None)
        with open(os.path.join(out, f"{run}-rank{rank}.json"), "w") as handle:
            json.dump(result, handle)


def gloo_threads():
    """This process's threads (Linux): gloo's run while a process group lives."""
    return len(os.listdir("/proc/self/task"))


threads_before = gloo_threads()
main()
# As PyTorch's DDP tutorial ends: destroy the process group (the Trainer made it). That stops gloo's threads only once
# nothing else holds the group: main() has returned, and its trainers, their DDP wrappers and the watches are freed.
# A group still alive at interpreter exit may abort the rank (SIGABRT, "terminate called without an active exception").
torch.distributed.destroy_process_group()
with open(os.path.join(out, f"threads-rank{rank}.json"), "w") as handle:
    json.dump({"before": threads_before, "after": gloo_threads()}, handle)
'''


def torchrun(tmp_path, *runs):
    """``torchrun --standalone --nproc_per_node 2 train.py`` as a user types it; returns the finished process."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path), *runs], capture_output=True, text=True, timeout=240,
                          env=env, cwd=tmp_path)


def no_crash(child):
    """Neither rank died by a signal (gloo's std::terminate at teardown is SIGABRT) nor lost its peer."""
    for sign in ("terminate called", "SIGABRT", "Signal 6", "Connection closed by peer", "Aborted"):
        assert sign not in child.stderr, child.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run's result on each rank, from one torchrun launch: {run: [rank 0, rank 1]}."""
    folder = tmp_path_factory.mktemp("ddp_trainer")
    names = ("plain", "raise", "stop", "skip", "callback-raise")
    child = torchrun(folder, *names)
    assert child.returncode == 0, child.stderr[-3000:]
    no_crash(child)
    return {name: [json.loads((folder / f"{name}-rank{rank}.json").read_text()) for rank in (0, 1)]
            for name in (*names, "threads")}


def test_destroying_the_process_group_after_main_stops_the_gloo_threads(runs):
    """The cause of the SIGABRT seen in 1 launch of several: ``nanlab.watch(trainer)`` made a reference cycle (the
    Trainer holds its callback, the callback held the Trainer; the Watch kept a remark that held the callback), so
    after main() returned, the Trainer, its DDP wrapper and the process group lived on until the garbage collector
    ran; ``destroy_process_group()`` cannot stop gloo's threads while the group is referenced, and a group alive at
    interpreter exit may abort the rank. Measured: 3 threads left per rank with that cycle, none without it."""
    for threads in runs["threads"]:
        assert threads["after"] == threads["before"], threads


BAD_STEP = 2  # the watch's count of the bad step (from 0); the Trainer's global_step 3


def nan_steps(result):
    return [int(step) for step, norm in result["grad_norms"].items() if not math.isfinite(norm)]


def test_without_the_watch_both_ranks_apply_the_nan_update(runs):
    rank0, rank1 = runs["plain"]
    assert str(rank0["grad_norms"]) == str(rank1["grad_norms"])  # as text: nan != nan
    assert nan_steps(rank0) == [3, 4, 5, 6]  # logged grad_norm nan from the Trainer's step 3 (1-based) on
    assert not rank0["finite"] and not rank1["finite"] and rank0["final"] == rank1["final"]


@pytest.mark.parametrize("run", ["raise", "callback-raise"])
def test_raise_on_every_rank_at_the_same_step_with_the_weights_from_before_it(runs, run):
    before = runs["plain"][0]["fingerprints"][str(BAD_STEP)]  # after the Trainer's step 2, without the watch
    for result in runs[run]:
        assert result["raised"] and result["step"] == BAD_STEP and result["global_step"] == BAD_STEP, result
        assert result["finite"] and result["final"] == before
    reports = [result["report"] for result in runs[run]]
    assert reports[0] == reports[1]  # one report, that of the rank the NaN appeared on
    report = reports[0]
    assert (report["step"], report["phase"], report["module"], report["op"]) == (BAD_STEP, "forward",
                                                                                 "model.embed_tokens", "div")
    assert (report["rank"], report["ranks"], report["samples"]) == (1, [1], [1])
    assert "it appeared on rank 1; every rank stopped at this step" in report["note"]


def test_stop_and_skip_take_the_same_decision_on_every_rank(runs):
    plain = runs["plain"][0]["fingerprints"]
    for result in runs["stop"]:
        assert result["stopped"] and not result["raised"] and result["skipped"] == [BAD_STEP]
        assert result["global_step"] == BAD_STEP + 1  # the Trainer counts the stopped step, whose update was dropped
        assert result["final"] == plain[str(BAD_STEP)]
    assert runs["stop"][0]["report"] == runs["stop"][1]["report"]
    for result in runs["skip"]:
        assert not result["raised"] and result["skipped"] == [BAD_STEP] and result["global_step"] == 6
        assert result["finite"] and result["report"]["rank"] == 1
        assert all(result["fingerprints"][str(step)] == plain[str(step)] for step in range(BAD_STEP + 1))
    assert runs["skip"][0]["final"] == runs["skip"][1]["final"]


def test_an_uncaught_raise_ends_both_ranks_with_the_error_and_no_abort(tmp_path):
    child = torchrun(tmp_path, "raise-uncaught")
    assert child.returncode != 0
    no_crash(child)
    assert child.stderr.count("nanlab.errors.NonFiniteError") >= 2 or child.stderr.count("NonFiniteError:") >= 2, \
        child.stderr[-3000:]
    assert "exitcode  : 1" in child.stderr or "exitcode: 1" in child.stderr, child.stderr[-3000:]
