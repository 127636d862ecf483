"""The training loops record without changing the numerics."""
import math

import pytest
import torch
from torch.nn import functional as F

import nanlab
from nanlab.causes.high_learning_rate import torch_recipe
from nanlab.seeding import seed_everything
from nanlab.frameworks.torch.loop import gradient_norm


def plain_torch_losses(seed: int, steps: int, lr: float) -> list[float]:
    """The loop a user would write, with no recording at all."""
    seed_everything(seed, "torch")
    training = torch_recipe.build_training(seed, "cpu", lr=lr)
    losses = []
    for _ in range(steps):
        x, y = next(training.batches)
        training.optimizer.zero_grad()
        loss = F.cross_entropy(training.model(x), y)
        loss.backward()
        training.optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("fix", [None, "lower-lr"])
def test_torch_recording_leaves_losses_bit_identical(fix):
    lr = torch_recipe.BROKEN_LR if fix is None else torch_recipe.SANE_LR
    run = nanlab.reproduce("high-learning-rate", "torch", "cpu", seed=1, fix=fix, steps=30)
    plain = plain_torch_losses(seed=1, steps=len(run.losses), lr=lr)
    assert len(plain) == len(run.losses)
    for recorded, expected in zip(run.losses, plain):
        assert recorded == expected or (math.isnan(recorded) and math.isnan(expected))


def test_keras_recording_leaves_losses_bit_identical():
    from nanlab.causes.high_learning_rate import tensorflow_recipe
    from nanlab.frameworks.tensorflow.loop import keras, tf

    run = nanlab.reproduce("high-learning-rate", "tensorflow", "cpu", seed=1, fix="lower-lr", steps=20)
    seed_everything(1, "tensorflow")
    training = tensorflow_recipe.build_training(1, keras.optimizers.SGD(learning_rate=tensorflow_recipe.SANE_LR))
    plain = []
    for _ in range(20):
        x, y = next(training.batches)
        with tf.GradientTape() as tape:
            loss = training.loss_fn(y, training.model(x, training=True))
        gradients = tape.gradient(loss, training.model.trainable_variables)
        training.optimizer.apply_gradients(zip(gradients, training.model.trainable_variables))
        plain.append(float(loss.numpy()))
    assert run.losses == plain


def test_gradient_norm_does_not_overflow_when_gradients_are_finite():
    layer = torch.nn.Linear(4, 1)
    for parameter in layer.parameters():
        parameter.grad = torch.full_like(parameter, 1e30)  # each square overflows float32
    norm = gradient_norm(list(layer.parameters()))
    assert math.isfinite(norm.item()) and norm.item() == pytest.approx(1e30 * math.sqrt(5), rel=1e-6)


def test_gradient_norm_is_nan_when_a_gradient_is():
    layer = torch.nn.Linear(2, 1)
    layer.weight.grad = torch.tensor([[1.0, float("nan")]])
    layer.bias.grad = torch.zeros(1)
    assert math.isnan(gradient_norm(list(layer.parameters())).item())


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_broken_run_stops_at_the_first_nonfinite_step(framework):
    run = nanlab.reproduce("high-learning-rate", framework, "cpu", seed=0)
    step = run.first_nonfinite_step
    assert step is not None and len(run.losses) == step + 1
    assert all(math.isfinite(loss) for loss in run.losses[:step])
    assert not (math.isfinite(run.losses[step]) and math.isfinite(run.grad_norms[step]))
    assert run.score is None and not run.learned
