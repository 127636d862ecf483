"""The verdicts of notebooks/*/80-myths-and-legacy.ipynb, measured again in code for each framework.

Each claim the source threads repeat: an MAE loss gives NaN (no: the slope of |x| at 0 is 0; a hand-written
sqrt(x**2) does), pooling with stride > kernel gives NaN (no: finite forward and backward), a loss weight too
high (yes under SGD, where it is a learning rate for the parameters it reaches; no under Adam), reduce the batch
size (no with a mean loss; yes with a summed one).

Then the remedies and diagnostics the sources give for any NaN (regularisation, tanh, RMSProp/Nadam, Adam at 1e-4,
overfitting one replicated sample, looking at the weights, and in Keras the ``optimizer.get_gradients`` clipping
recipe): the committed notebooks are the record, nbval checks that a fresh run prints the same summary table, and
the last test checks that every claim has a verdict and that each verdict follows from what its run printed."""
import math
import pathlib
import re

import nbformat
import numpy as np
import pytest

FRAMEWORKS = ["torch", "tensorflow"]
LR = 0.01
LOSS_WEIGHT = 1000.0


class TorchProbe:
    def __init__(self):
        self.torch = pytest.importorskip("torch")
        import torch.nn.functional as F
        self.F = F

    def gradients_at_ties(self) -> dict:
        torch, F = self.torch, self.F
        target = torch.tensor([0.5, -1.0, 2.0])
        losses = {"library": lambda p: F.l1_loss(p, target), "abs": lambda p: (p - target).abs().mean(),
                  "sqrt of square": lambda p: torch.sqrt((p - target) ** 2).mean()}
        gradients = {}
        for name, loss_fn in losses.items():
            prediction = target.clone().requires_grad_()
            loss_fn(prediction).backward()
            gradients[name] = prediction.grad.tolist()
        return gradients

    def pooling_finite(self) -> list[bool]:
        torch, F = self.torch, self.F
        image = torch.randn(1, 1, 10, 10, generator=torch.Generator().manual_seed(0)).requires_grad_()
        finite = []
        for pool in (F.max_pool2d, F.avg_pool2d):
            for ceil_mode in (False, True):
                image.grad = None
                pooled = pool(image, kernel_size=3, stride=5, ceil_mode=ceil_mode)
                pooled.sum().backward()
                finite.append(bool(torch.isfinite(pooled).all() and torch.isfinite(image.grad).all()))
        return finite

    def two_heads(self, weight: float, optimizer: str, lr_b: float, steps: int) -> list[np.ndarray]:
        torch, F = self.torch, self.F
        generator = torch.Generator().manual_seed(0)
        x_a, y_a, x_b, y_b = (torch.randn(32, width, generator=generator) for width in (4, 1, 4, 1))
        torch.manual_seed(0)
        head_a, head_b = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
        optimizer_class = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optimizer]
        step = optimizer_class([{"params": head_a.parameters()}, {"params": head_b.parameters(), "lr": lr_b}], lr=LR)
        for _ in range(steps):
            loss = F.mse_loss(head_a(x_a), y_a) + weight * F.mse_loss(head_b(x_b), y_b)
            step.zero_grad()
            loss.backward()
            step.step()
        return [torch.cat([p.detach().flatten() for p in head.parameters()]).numpy() for head in (head_a, head_b)]

    def regression_losses(self, seed: int, batch_size: int, lr: float, reduction: str, steps: int) -> list[float]:
        torch, F = self.torch, self.F
        torch.manual_seed(seed)
        true_weights = torch.randn(8, 1)
        model = torch.nn.Linear(8, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        losses = []
        for _ in range(steps):
            x = torch.randn(batch_size, 8)
            y = x @ true_weights + 0.1 * torch.randn(batch_size, 1)
            prediction = model(x)
            losses.append(F.mse_loss(prediction.detach(), y).item())
            if not math.isfinite(losses[-1]):
                break
            optimizer.zero_grad()
            F.mse_loss(prediction, y, reduction=reduction).backward()
            optimizer.step()
        return losses


class TensorFlowProbe:
    def __init__(self):
        pytest.importorskip("tensorflow")
        from nanlab.frameworks.tensorflow.backend import keras, tf
        self.keras, self.tf = keras, tf

    def _all_finite(self, *tensors) -> bool:
        return all(bool(self.tf.reduce_all(self.tf.math.is_finite(tensor))) for tensor in tensors)

    def gradients_at_ties(self) -> dict:
        keras, tf = self.keras, self.tf
        target = tf.constant([0.5, -1.0, 2.0])
        losses = {"library": keras.losses.MeanAbsoluteError(), "abs": lambda y, p: tf.reduce_mean(tf.abs(p - y)),
                  "sqrt of square": lambda y, p: tf.reduce_mean(tf.sqrt((p - y) ** 2))}
        gradients = {}
        for name, loss_fn in losses.items():
            prediction = tf.Variable(target)
            with tf.GradientTape() as tape:
                loss = loss_fn(target, prediction)
            gradients[name] = tape.gradient(loss, prediction).numpy().tolist()
        return gradients

    def pooling_finite(self) -> list[bool]:
        keras, tf = self.keras, self.tf
        image = tf.Variable(tf.random.stateless_normal((1, 10, 10, 1), seed=(0, 0)))
        finite = []
        for layer in (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D):
            for padding in ("valid", "same"):
                with tf.GradientTape() as tape:
                    pooled = layer(pool_size=3, strides=5, padding=padding)(image)
                    total = tf.reduce_sum(pooled)
                finite.append(self._all_finite(pooled, tape.gradient(total, image)))
        return finite

    def two_heads(self, weight: float, optimizer: str, lr_b: float, steps: int) -> list[np.ndarray]:
        keras, tf = self.keras, self.tf
        rng = np.random.default_rng(0)
        x_a, y_a, x_b, y_b = (rng.standard_normal((32, width)).astype("float32") for width in (4, 1, 4, 1))
        keras.utils.set_random_seed(0)
        head_a, head_b = keras.layers.Dense(1), keras.layers.Dense(1)
        head_a.build((None, 4))
        head_b.build((None, 4))
        optimizer_class = {"sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam}[optimizer]
        optimizer_a, optimizer_b = optimizer_class(learning_rate=LR), optimizer_class(learning_rate=lr_b)
        for _ in range(steps):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((head_a(x_a) - y_a) ** 2) + weight * tf.reduce_mean((head_b(x_b) - y_b) ** 2)
            gradient_a, gradient_b = tape.gradient(loss, [head_a.trainable_variables, head_b.trainable_variables])
            optimizer_a.apply_gradients(zip(gradient_a, head_a.trainable_variables))
            optimizer_b.apply_gradients(zip(gradient_b, head_b.trainable_variables))
        return [np.concatenate([v.numpy().ravel() for v in head.trainable_variables]) for head in (head_a, head_b)]

    def regression_losses(self, seed: int, batch_size: int, lr: float, reduction: str, steps: int) -> list[float]:
        keras, tf = self.keras, self.tf
        keras.utils.set_random_seed(seed)
        rng = np.random.default_rng(seed)
        true_weights = rng.standard_normal((8, 1)).astype("float32")
        model = keras.layers.Dense(1)
        model.build((None, 8))
        optimizer = keras.optimizers.SGD(learning_rate=lr)
        loss_fn = keras.losses.MeanSquaredError(reduction={"mean": "sum_over_batch_size", "sum": "sum"}[reduction])
        losses = []
        for _ in range(steps):
            x = rng.standard_normal((batch_size, 8)).astype("float32")
            y = x @ true_weights + 0.1 * rng.standard_normal((batch_size, 1)).astype("float32")
            with tf.GradientTape() as tape:
                prediction = model(x)
                loss = loss_fn(y, prediction)
            losses.append(float(tf.reduce_mean((prediction - y) ** 2)))
            if not math.isfinite(losses[-1]):
                break
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return losses


@pytest.fixture(params=FRAMEWORKS)
def probe(request):
    return {"torch": TorchProbe, "tensorflow": TensorFlowProbe}[request.param]()


def test_an_mae_loss_has_a_zero_gradient_at_ties_and_a_hand_written_sqrt_of_a_square_a_nan(probe):
    gradients = probe.gradients_at_ties()
    assert gradients["library"] == [0.0] * 3 and gradients["abs"] == [0.0] * 3
    assert all(math.isnan(g) for g in gradients["sqrt of square"])


def test_pooling_with_stride_above_kernel_is_finite_forward_and_backward(probe):
    assert probe.pooling_finite() == [True] * 4


def test_a_loss_weight_is_a_learning_rate_under_sgd_and_cancels_under_adam(probe):
    weighted = probe.two_heads(LOSS_WEIGHT, "sgd", lr_b=LR, steps=3)
    faster_b = probe.two_heads(1.0, "sgd", lr_b=LR * LOSS_WEIGHT, steps=3)
    assert np.array_equal(weighted[0], faster_b[0]), "the head the weighted term does not reach is untouched"
    assert np.allclose(weighted[1], faster_b[1], rtol=1e-5, atol=0.0)
    assert np.isfinite(weighted[1]).all() and np.abs(weighted[1]).max() > 10, "three steps already blow it up"
    sgd_a, sgd_b = probe.two_heads(LOSS_WEIGHT, "sgd", lr_b=LR, steps=60)
    assert np.isfinite(sgd_a).all() and not np.isfinite(sgd_b).all()
    adam_weighted = probe.two_heads(LOSS_WEIGHT, "adam", lr_b=LR, steps=60)[1]
    adam_plain = probe.two_heads(1.0, "adam", lr_b=LR, steps=60)[1]
    start = probe.two_heads(1.0, "adam", lr_b=LR, steps=0)[1]
    assert np.abs(adam_weighted - adam_plain).max() < 1e-5 < np.abs(adam_plain - start).max()


def _goes_nonfinite(losses: list[float]) -> bool:
    return not math.isfinite(losses[-1])


@pytest.mark.parametrize("seed", [0, 1])
def test_a_smaller_batch_helps_only_a_summed_loss(probe, seed):
    for batch_size in (64, 4):
        assert _goes_nonfinite(probe.regression_losses(seed, batch_size, 3.0, "mean", steps=60)), batch_size
    assert _goes_nonfinite(probe.regression_losses(seed, 64, 0.05, "sum", steps=60))
    small_batch = probe.regression_losses(seed, 4, 0.05, "sum", steps=60)
    assert all(map(math.isfinite, small_batch)) and small_batch[-1] < 0.05 * small_batch[0]


# -- the record: the committed notebooks' verdicts, each recomputed from the lines its run printed -------------------

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECORDS = {"torch": ROOT / "notebooks" / "pytorch" / "80-myths-and-legacy.ipynb",
           "tensorflow": ROOT / "notebooks" / "tensorflow" / "80-myths-and-legacy.ipynb"}
FOLK_CLAIMS = ["An MAE (L1) loss gives NaN", "Pooling with stride > kernel gives NaN", "A loss_weight too high (SGD)",
               "A loss_weight too high (Adam)", "Reduce the batch size (mean loss)",
               "Reduce the batch size (summed loss)"]
REMEDY_CLAIMS = {"torch": ["Regularization helps", "Use tanh", "Use RMSprop", "Use NAdam",
                           "Lower the rate: Adam at 1e-4"],
                 "tensorflow": ["Regularization helps", "Use tanh", "Use RMSprop", "Use Nadam",
                                "Lower the rate: Adam at 1e-4"]}
DIAGNOSTIC_CLAIMS = ["Overfit one replicated sample", "Look at the weights"]
KERAS_CLAIMS = {"torch": [], "tensorflow": ["optimizer.get_gradients clipping recipe"]}
CAUSE_LINE = re.compile(r"^  (\S+(?: \S+)*?)\s{2,}"
                        r"(non-finite at step .*|finite and learns, .*|finite, does not learn, .*)$")
BLAME_LINE = re.compile(r"^(\S+)\s+the test blames the (.+?)\s+the cause is in the (\w+)$")
WEIGHT_LINE = re.compile(r"^(\S+)\s+largest \|weight\| before the NaN: (\S+) x its start$")


def _record(framework: str) -> tuple[list[tuple[list[str], str]], dict[str, str]]:
    """Each verdict with the lines printed since the verdict before it, in order, and the summary table."""
    notebook = nbformat.read(RECORDS[framework], as_version=4)
    printed, table, chunk = [], {}, []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            for line in output.get("text", "").splitlines():
                if line.startswith("VERDICT: "):
                    printed.append((chunk, line.removeprefix("VERDICT: ")))
                    chunk = []
                else:
                    chunk.append(line)
            for row in output.get("data", {}).get("text/markdown", "").splitlines()[2:]:
                claim, head = (part.strip() for part in row.strip("|").split("|"))
                table[claim] = head
    return printed, table


def _head(kept: list[str], labels: list[str]) -> str:
    if kept and len(kept) == len(labels):
        return "holds"
    return f"holds only for {', '.join(kept)}" if kept else "does not hold"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_claim_of_the_record_has_a_verdict_and_each_verdict_follows_from_its_run(framework):
    printed, table = _record(framework)
    claims = FOLK_CLAIMS + REMEDY_CLAIMS[framework] + DIAGNOSTIC_CLAIMS + KERAS_CLAIMS[framework]
    assert list(table) == claims, "the summary table lists every claim once, in the order the sections run them"
    assert [text.split(":")[0] for _, text in printed] == list(table.values()), "the table is the printed verdicts"
    version = re.escape("torch " if framework == "torch" else "TF ")
    verdicts = dict(zip(claims, printed))
    for claim in REMEDY_CLAIMS[framework]:
        lines, text = verdicts[claim]
        causes = [CAUSE_LINE.match(line).groups() for line in lines if CAUSE_LINE.match(line)]
        assert len(causes) >= 2, f"{claim}: every remedy runs on at least two catalogue causes"
        kept = [label for label, phrase in causes if phrase.startswith("finite and learns")]
        assert re.fullmatch(rf"{re.escape(_head(kept, causes))} \({version}[\d.]+\): .+", text), (claim, text)
        for label, phrase in causes:
            assert f"{label}: {phrase}" in text
    lines, text = verdicts["Overfit one replicated sample"]
    readings = [BLAME_LINE.match(line).groups() for line in lines if BLAME_LINE.match(line)]
    assert {truth for _, _, truth in readings} == {"parameters", "network", "data"}, "a cause of each kind"
    right = [cause for cause, blamed, truth in readings if blamed == truth]
    assert text.startswith(_head(right, readings) + " (")
    lines, text = verdicts["Look at the weights"]
    growth = [WEIGHT_LINE.match(line).groups() for line in lines if WEIGHT_LINE.match(line)]
    assert len(growth) >= 3
    shown = [cause for cause, factor in growth if float(factor) >= 100]
    assert text.startswith(_head(shown, growth) + " (")
    for claim in KERAS_CLAIMS[framework]:
        lines, text = verdicts[claim]
        assert any("raises AttributeError" in line for line in lines) and any(line.endswith("True") for line in lines)
        assert re.fullmatch(r"gone in Keras 3 \(TF [\d.]+, keras 3\.\d+\): calling it raises AttributeError .+"
                            r"the Keras 3 way is clipnorm / global_clipnorm .+", text)
