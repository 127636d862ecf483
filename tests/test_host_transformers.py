"""nanlab.watch(trainer) for the Transformers Trainer, tested as a user trains: a tiny Llama built from its config
(no download), a streamed dataset, the Trainer's own arguments; one line, ``nanlab.watch(trainer)``, added.

The NaN: token 63 is a token whose embedding lookup is broken (a forward hook divides its rows by zero, as a
corrupted resize of the vocabulary would leave them): the stream carries it first in sample 13, which is in the
batch of step 3 (batch size 4, samples in order), so the loss is NaN from step 3 on.
"""
import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from torch.nn import functional as F  # noqa: E402
from transformers import (LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback,  # noqa: E402
                          TrainingArguments)

import nanlab  # noqa: E402
from nanlab.frameworks.torch.hosts.transformers import WatchCallback  # noqa: E402

BROKEN_TOKEN = 63
SEQ = 16


def tiny_llama(seed=0, broken_token=True):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    if broken_token:
        embed = model.get_input_embeddings()
        embed.register_forward_hook(lambda module, args, out: out / (args[0] != BROKEN_TOKEN).unsqueeze(-1))
    return model


class Stream(torch.utils.data.IterableDataset):
    """Token sequences in order; ``poisoned`` samples carry the broken token, ``unlabelled`` ones only padding
    labels (-100)."""

    def __init__(self, n=64, poisoned=(), unlabelled=()):
        self.n, self.poisoned, self.unlabelled = n, set(poisoned), set(unlabelled)

    def __iter__(self):
        for i in range(self.n):
            ids = torch.randint(0, BROKEN_TOKEN, (SEQ,), generator=torch.Generator().manual_seed(i))
            if i in self.poisoned:
                ids[5] = BROKEN_TOKEN
            labels = torch.full_like(ids, -100) if i in self.unlabelled else ids.clone()
            yield {"input_ids": ids, "labels": labels}


def arguments(tmp_path, steps=6, **overrides):
    settings = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=steps,
                    learning_rate=1e-3, lr_scheduler_type="constant", report_to="none", use_cpu=True,
                    save_strategy="no", logging_steps=1, dataloader_num_workers=0, disable_tqdm=True, seed=0)
    settings.update(overrides)
    return TrainingArguments(**settings)


class LogKeeper(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.logs.append((state.global_step, logs["loss"], logs.get("grad_norm")))


def weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_without_the_watch_the_trainer_logs_loss_0_and_applies_every_update(tmp_path):
    """The issue's finding, kept measured: the log shows loss 0.0 and grad_norm nan from step 3 on, training runs
    to the end and the weights end non-finite."""
    model = tiny_llama()
    logs = LogKeeper()
    trainer = Trainer(model=model, args=arguments(tmp_path), train_dataset=Stream(poisoned={13}), callbacks=[logs])
    trainer.train()
    assert [step for step, loss, norm in logs.logs] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(loss) and math.isfinite(norm) for _, loss, norm in logs.logs[:3])
    assert [(loss, math.isnan(norm)) for _, loss, norm in logs.logs[3:]] == [(0.0, True)] * 3
    assert not all(torch.isfinite(p).all() for p in model.parameters())


def test_raises_at_the_bad_step_with_the_weights_of_a_plain_run_of_that_many_steps(tmp_path):
    plain = tiny_llama()
    Trainer(model=plain, args=arguments(tmp_path, steps=3), train_dataset=Stream(poisoned={13})).train()

    model = tiny_llama()
    trainer = Trainer(model=model, args=arguments(tmp_path), train_dataset=Stream(poisoned={13}))
    nanlab.watch(trainer)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        trainer.train()
    report = raised.value.report
    assert report.step == 3 and trainer.state.global_step == 3
    assert (report.phase, report.module, report.op) == ("forward", "model.embed_tokens", "div"), str(report)
    assert report.samples == [1]  # sample 13 of the stream is the second of step 3's batch
    assert "logging_nan_inf_filter" in report.note and "0.0" in report.note
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert same_weights(weights(model), weights(plain))
    assert not model.get_input_embeddings()._forward_pre_hooks, "the watch detached"


def test_stop_ends_training_at_the_bad_step_without_its_update(tmp_path):
    plain = tiny_llama()
    Trainer(model=plain, args=arguments(tmp_path, steps=3), train_dataset=Stream(poisoned={13})).train()

    model = tiny_llama()
    trainer = Trainer(model=model, args=arguments(tmp_path), train_dataset=Stream(poisoned={13}))
    watch = nanlab.watch(trainer, on_nonfinite="stop")
    trainer.train()
    assert watch.stopped and watch.report.step == 3
    assert trainer.state.global_step == 4  # the Trainer counts the stopped step, whose update was dropped
    assert same_weights(weights(model), weights(plain))


def test_skip_drops_the_bad_updates_and_trains_on(tmp_path):
    model = tiny_llama()
    trainer = Trainer(model=model, args=arguments(tmp_path), train_dataset=Stream(poisoned={13, 21}))
    watch = nanlab.watch(trainer, on_nonfinite="skip")
    trainer.train()
    assert trainer.state.global_step == 6
    assert watch.history.skipped_steps == [3, 5]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_callbacks_form_raises_too(tmp_path):
    model = tiny_llama()
    trainer = Trainer(model=model, args=arguments(tmp_path), train_dataset=Stream(poisoned={13}),
                      callbacks=[WatchCallback(on_nonfinite="raise")])
    with pytest.raises(nanlab.NonFiniteError) as raised:
        trainer.train()
    assert raised.value.report.step == 3


@pytest.mark.parametrize("form", ["raise", "stop", "skip", "callbacks-raise"])
def test_the_watch_lets_go_of_the_trainer_and_its_model(tmp_path, form, refcounting_only):
    """Trained inside a function, as a script's main() does: once it returns, the Trainer and its model are freed by
    reference counting alone, as without the watch. A reference cycle through the watch would keep them (under DDP,
    the process group and gloo's threads with them) alive until the garbage collector happens to run, perhaps only at
    interpreter exit, where a live gloo process group can abort the rank (SIGABRT)."""
    import weakref

    def train():
        model = tiny_llama()
        callbacks = [WatchCallback(on_nonfinite="raise")] if form == "callbacks-raise" else []
        trainer = Trainer(model=model, args=arguments(tmp_path), train_dataset=Stream(poisoned={13}),
                          callbacks=callbacks)
        watch = callbacks[0] if callbacks else nanlab.watch(trainer, on_nonfinite=form)
        try:
            trainer.train()
        except nanlab.NonFiniteError:
            pass
        assert watch.report is not None and watch.report.step == 3
        return weakref.ref(trainer), weakref.ref(model), weakref.ref(watch)

    held = train()
    assert [ref() is None for ref in held] == [True, True, True], [type(ref()).__name__ for ref in held]


def test_healthy_run_is_bit_identical_under_the_watch(tmp_path):
    def run(watched):
        model = tiny_llama(broken_token=False)
        logs = LogKeeper()
        trainer = Trainer(model=model, args=arguments(tmp_path, gradient_accumulation_steps=2),
                          train_dataset=Stream(), callbacks=[logs])
        watch = nanlab.watch(trainer) if watched else None
        trainer.train()
        if watched:
            assert watch.step == 6 and watch.report is None and len(watch.history.losses) == 6
        return weights(model), logs.logs

    (plain, plain_logs), (watched, watched_logs) = run(False), run(True)
    assert plain_logs == watched_logs
    assert same_weights(plain, watched)


def test_gradient_accumulation_names_the_micro_batch_and_its_sample(tmp_path):
    # batch 2, two micro-batches an update: step 3 holds samples 12-15; sample 14 is micro-batch 1's first
    model = tiny_llama()
    trainer = Trainer(model=model, args=arguments(tmp_path, per_device_train_batch_size=2,
                                                  gradient_accumulation_steps=2),
                      train_dataset=Stream(poisoned={14}))
    nanlab.watch(trainer)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        trainer.train()
    report = raised.value.report
    assert (report.step, report.micro_batch, report.samples) == (3, 1, [0]), str(report)
    assert "Micro-batch 1 of the 2" in report.note


def token_mean_loss(outputs, labels, num_items_in_batch=None):
    """A token-averaged loss that divides by the count of labelled tokens: a batch whose labels are all padding
    makes it 0/0."""
    logits = outputs.logits[:, :-1].flatten(0, 1)
    targets = labels[:, 1:].flatten()
    summed = F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
    return summed / (targets != -100).sum()


def test_a_loss_computed_outside_the_model_is_checked_and_replayed(tmp_path):
    """The all-padding batch's loss is 0/0 = NaN but its gradients are exactly 0 (the cross-entropy of ignored
    tokens passes none back): only the loss shows the fault, and the Trainer's log shows 0.0."""
    model = tiny_llama(broken_token=False)
    trainer = Trainer(model=model, args=arguments(tmp_path), compute_loss_func=token_mean_loss,
                      train_dataset=Stream(unlabelled={8, 9, 10, 11}))
    nanlab.watch(trainer)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        trainer.train()
    report = raised.value.report
    assert (report.step, report.phase, report.op) == (2, "loss", "div"), str(report)
    assert trainer.compute_loss_func is token_mean_loss, "the Trainer's own function is back"
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_raises_at_the_bad_step_and_is_bit_identical_when_healthy(tmp_path):
    def run(watched, poisoned=()):
        model = tiny_llama()
        logs = LogKeeper()
        trainer = Trainer(model=model, args=arguments(tmp_path, bf16=True), train_dataset=Stream(poisoned=poisoned),
                          callbacks=[logs])
        if watched:
            nanlab.watch(trainer)
        trainer.train()
        return weights(model), logs.logs

    (plain, plain_logs), (watched, watched_logs) = run(False), run(True)
    assert plain_logs == watched_logs and same_weights(plain, watched)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        run(True, poisoned={13})
    assert raised.value.report.step == 3 and raised.value.report.module == "model.embed_tokens"


def test_watching_twice_keeps_one_watch(tmp_path):
    trainer = Trainer(model=tiny_llama(), args=arguments(tmp_path), train_dataset=Stream())
    nanlab.watch(trainer)
    second = nanlab.watch(trainer, on_nonfinite="stop")
    watches = [c for c in trainer.callback_handler.callbacks if isinstance(c, WatchCallback)]
    assert watches == [second]


def test_the_trainer_alone(tmp_path):
    trainer = Trainer(model=tiny_llama(), args=arguments(tmp_path), train_dataset=Stream())
    with pytest.raises(nanlab.NanlabError, match="Trainer alone"):
        nanlab.watch(trainer, torch.optim.SGD(trainer.model.parameters(), lr=0.1))


def test_a_trainer_whose_loss_function_cannot_be_recorded_still_raises(tmp_path):
    """The one attribute the watch replaces on the Trainer (private.replace_attribute), taken away as a release
    might: compute_loss_func as a property. The gradients are still checked (a NaN that reaches them raises and is
    localised by replaying the forward pass); the report says the loss was not. (A NaN loss with zero gradients,
    as the all-padding batch above gives, is then out of reach: only the recorded loss shows it.)"""

    class PropertyTrainer(Trainer):
        compute_loss_func = property(lambda self: token_mean_loss, lambda self, value: None)

    model = tiny_llama()
    trainer = PropertyTrainer(model=model, args=arguments(tmp_path), compute_loss_func=token_mean_loss,
                              train_dataset=Stream(poisoned={13}))
    nanlab.watch(trainer)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        trainer.train()
    report = raised.value.report
    assert (report.step, report.module, report.samples) == (3, "model.embed_tokens", [1])
    assert "compute_loss_func" in report.note and "could not be recorded" in report.note
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Trainer's fp16 (accelerate's GradScaler) needs CUDA")
def test_fp16_with_the_trainers_scaler_skips_a_one_off_and_raises_when_skipping_persists(tmp_path):
    model = tiny_llama()
    trainer = Trainer(model=model, args=arguments(tmp_path, fp16=True, use_cpu=False),
                      train_dataset=Stream(poisoned={13}))
    watch = nanlab.watch(trainer)
    trainer.train()  # the scaler skips step 3's update, as it would without the watch
    assert watch.history.skipped_steps == [3] and watch.report is None
    assert all(torch.isfinite(p).all() for p in model.parameters())

    model = tiny_llama()
    trainer = Trainer(model=model, args=arguments(tmp_path, fp16=True, use_cpu=False),
                      train_dataset=Stream(poisoned={13, 17, 21}))
    nanlab.watch(trainer, overflow_patience=3)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        trainer.train()
    assert raised.value.report.step == 5 and raised.value.report.module == "model.embed_tokens"
    assert all(torch.isfinite(p).all() for p in model.parameters())


# -- TrainingArguments(torch_compile=True) ------------------------------------------------------------------------
# Backend "aot_eager": dynamo's graph capture and AOTAutograd's joint forward/backward graph, as inductor gets them,
# without generating C++. Inductor's first compile of this Llama's forward and backward takes tens of seconds on a
# 2-core CPU (25 s for a 3-layer MLP, tests/test_host_compile.py); the watch's hooks sit outside the graph either way.
def compiled_run(tmp_path, watched, poisoned=()):
    """A fresh compile (dynamo reset) and a Trainer(torch_compile=True) run; dynamo's counters after it."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = tiny_llama()
    logs = LogKeeper()
    trainer = Trainer(model=model, args=arguments(tmp_path, steps=4, torch_compile=True,
                                                  torch_compile_backend="aot_eager"),
                      train_dataset=Stream(poisoned=poisoned), callbacks=[logs])
    watch = nanlab.watch(trainer) if watched else None
    error = None
    try:
        trainer.train()
    except nanlab.NonFiniteError as raised:
        error = raised
    compiled = {"frames": counters["frames"]["ok"], "graphs": counters["stats"]["unique_graphs"],
                "breaks": sum(counters["graph_break"].values()), "recompiles": sum(counters["recompiles"].values())}
    return model, trainer, watch, logs.logs, compiled, error


def test_torch_compile_healthy_is_bit_identical_with_no_added_graph_break_or_recompile(tmp_path):
    plain, _, _, plain_logs, plain_counts, _ = compiled_run(tmp_path, watched=False)
    model, trainer, watch, logs, counts, error = compiled_run(tmp_path, watched=True)
    assert error is None and watch.step == 4 and watch.report is None
    assert counts == plain_counts and counts["graphs"] >= 1, (counts, plain_counts)
    assert logs == plain_logs and same_weights(weights(model), weights(plain))
    assert isinstance(trainer.model_wrapped, torch._dynamo.eval_frame.OptimizedModule)  # the Trainer compiled it


def test_torch_compile_a_bad_step_is_localised_by_an_eager_replay_of_the_original_module(tmp_path):
    _, _, _, _, healthy_counts, _ = compiled_run(tmp_path, watched=False)
    model, trainer, watch, _, counts, error = compiled_run(tmp_path, watched=True, poisoned={13})
    report = error.report
    assert (report.step, report.phase, report.module, report.op) == (3, "forward", "model.embed_tokens", "div"), \
        str(report)
    assert report.samples == [1]
    assert "compiler is suspected" not in (report.note or "")  # aot_eager and the eager replay agree
    assert counts == healthy_counts, "the replay ran eagerly: nothing compiled again"
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_torch_compile_with_the_callbacks_form_warns_of_its_graph_breaks(tmp_path, caplog):
    """The callbacks form is handed the module inside the compiled one: its hooks there break the graph, which the
    warning says, pointing to nanlab.watch(trainer) (tested above: none)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    trainer = Trainer(model=tiny_llama(broken_token=False), args=arguments(tmp_path, steps=2, torch_compile=True,
                                                                           torch_compile_backend="aot_eager"),
                      train_dataset=Stream(), callbacks=[WatchCallback()])
    with caplog.at_level("WARNING", logger="nanlab.watch"):
        trainer.train()
    assert "nanlab.watch(trainer)" in caplog.text and "graph breaks" in caplog.text
    assert sum(counters["graph_break"].values()) > 0  # what the warning is about
