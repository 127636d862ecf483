"""The watch's CUDA paths: they skip without a CUDA GPU, and ``make gpu-check`` runs them where there is one.

- the replay restores the CUDA RNG state each forward ran with (dropout on the GPU replays the same masks);
- out-of-range class labels are caught before the loss runs, so no device-side assert poisons the process;
- ``GradScaler("cuda")`` with float16 autocast: occasional skips are expected, persistent ones are reported;
- a ``torch.compile``d model trains bit-identically under the watch.
"""
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import nanlab  # noqa: E402

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)")]
DEVICE = "cuda"


def classifier(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 4)).to(DEVICE)


def batches(seed=0, steps=6, batch=16):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 8, generator=generator).to(DEVICE),
             torch.randint(0, 4, (batch,), generator=generator).to(DEVICE)) for _ in range(steps)]


class LogOfDroppedSum(nn.Module):
    """log of a dropout-masked sum: finite or -inf depending on the CUDA dropout mask alone."""

    def forward(self, x):
        return torch.log(F.dropout(x.abs().sum(dim=1, keepdim=True), p=0.5, training=self.training)).expand(-1, 4)


def test_the_replay_restores_the_cuda_rng_each_forward_ran_with():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), LogOfDroppedSum()).to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.cross_entropy) as watch:
            for x, y in batches(steps=20):
                optimizer.zero_grad()
                watch.loss_fn(model(x), y).backward()
                optimizer.step()
    report = raised.value.report
    # Only a replay with the same dropout mask finds the log of 0 and exactly the dropped samples.
    assert (report.phase, report.op, report.cause) == ("forward", "log", "log-of-zero")
    assert report.samples and "not reproducible" not in str(report)


def test_out_of_range_labels_are_caught_before_the_loss_on_the_gpu():
    model = classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batches(steps=1)[0]
    y[3] = 8000  # on CUDA, cross_entropy would trip an asynchronous device-side assert that poisons the process
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.cross_entropy) as watch:
            optimizer.zero_grad()
            watch.loss_fn(model(x), y).backward()
            optimizer.step()
    report = raised.value.report
    assert report.phase == "data" and report.samples == [3] and report.cause == "huge-labels"
    assert torch.isfinite(model(x)).all()  # the process (and the CUDA context) still works


def test_grad_scaler_on_cuda_tolerates_occasional_skips_and_reports_persistent_overflow():
    model = classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 40)  # the first steps overflow float16 and back off
    with nanlab.watch(model, optimizer, F.cross_entropy, scaler=scaler) as watch:
        for x, y in batches(steps=40):
            optimizer.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):
                loss = watch.loss_fn(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    assert watch.report is None and watch.history.skipped_steps[:1] == [0]
    assert watch.step == 40 and len(watch.history.loss_scales) == 40

    huge = classifier(seed=1)
    with torch.no_grad():
        huge[0].weight.mul_(1e4)  # every float16 forward overflows: the scaler can never recover
    optimizer = torch.optim.SGD(huge.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cuda")
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(huge, optimizer, F.cross_entropy, scaler=scaler, overflow_patience=3) as watch:
            for x, y in batches(steps=10):
                optimizer.zero_grad()
                with torch.autocast("cuda", dtype=torch.float16):
                    loss = watch.loss_fn(huge(x * 1e3), y)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
    assert raised.value.report.cause == "fp16-overflow"


def test_a_compiled_model_trains_bit_identically_under_the_watch():
    def train(watched: bool):
        model = torch.compile(classifier(seed=2))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses = []
        watch = nanlab.watch(model, optimizer, F.cross_entropy) if watched else None
        loss_fn = watch.loss_fn if watched else F.cross_entropy
        if watched:
            watch.__enter__()
        for x, y in batches(steps=8):
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        if watched:
            watch.__exit__(None, None, None)
        return losses, [p.detach().cpu() for p in model.parameters()]

    plain_losses, plain_weights = train(False)
    watched_losses, watched_weights = train(True)
    assert watched_losses == plain_losses
    assert all(torch.equal(a, b) for a, b in zip(plain_weights, watched_weights))
