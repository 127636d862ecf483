"""Exploding RNN gradients in PyTorch: the broken setting and its fixes."""
import torch
from torch import nn
from torch.nn import functional as F

from nanlab.causes.exploding_rnn_gradients import (BATCH_SIZE, CLIP_VALUE, GRU_LR, HIDDEN_UNITS, LR,
                                                   MAX_GRAD_NORM, SPECTRAL_RADIUS, make_data, recurrent_matrix)
from nanlab.frameworks.torch.loop import Training, accuracy, minibatches


class SequenceClassifier(nn.Module):
    """A recurrent layer read out at the last time step."""

    def __init__(self, recurrent: nn.Module):
        super().__init__()
        self.recurrent = recurrent
        self.readout = nn.Linear(HIDDEN_UNITS, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, _ = self.recurrent(x)
        return self.readout(states[:, -1])


def vanilla_rnn(spectral_radius: float = SPECTRAL_RADIUS) -> nn.Module:
    model = SequenceClassifier(nn.RNN(1, HIDDEN_UNITS, nonlinearity="relu", batch_first=True))
    with torch.no_grad():
        model.recurrent.weight_hh_l0.copy_(torch.from_numpy(recurrent_matrix(spectral_radius)))
    return model


def build_training(model: nn.Module, seed: int, device: str, lr: float = LR,
                   max_grad_norm: float | None = None) -> Training:
    data = make_data(seed)
    model = model.to(device)
    return Training(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr),
        loss_fn=F.cross_entropy,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(data.x_eval, data.y_eval, device),
        max_grad_norm=max_grad_norm,
    )


def broken(seed: int, device: str) -> Training:
    return build_training(vanilla_rnn(), seed, device)  # recurrent weights 1.25 * I


def clip_grad_norm(seed: int, device: str) -> Training:
    # the loop calls torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM) after backward()
    return build_training(vanilla_rnn(), seed, device, max_grad_norm=MAX_GRAD_NORM)


def gru(seed: int, device: str) -> Training:
    return build_training(SequenceClassifier(nn.GRU(1, HIDDEN_UNITS, batch_first=True)), seed, device, lr=GRU_LR)


SETTINGS = {"broken": broken, "clip-grad-norm": clip_grad_norm, "gru": gru}


def clip_grad_value(seed: int, device: str) -> Training:
    """The same RNN with every gradient component clamped to [-CLIP_VALUE, CLIP_VALUE]: bounded, but turned."""
    training = build_training(vanilla_rnn(), seed, device)
    parameters = list(training.model.parameters())
    # clip_grad_value_ between backward() and step(): an optimizer step pre-hook runs exactly there
    training.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: torch.nn.utils.clip_grad_value_(parameters, CLIP_VALUE))
    return training


def gradients_at_init(seq_len: int, seed: int, spectral_radius: float = SPECTRAL_RADIUS) -> list[torch.Tensor]:
    """The gradients of a fresh vanilla RNN on one batch of sequences ``seq_len`` long (no step taken)."""
    torch.manual_seed(seed)
    model = vanilla_rnn(spectral_radius)
    data = make_data(seed, seq_len)
    x, y = torch.from_numpy(data.x_train[:BATCH_SIZE]), torch.from_numpy(data.y_train[:BATCH_SIZE])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return [p.grad for p in model.parameters()]


def gradient_norm_at_init(seq_len: int, seed: int = 0, spectral_radius: float = SPECTRAL_RADIUS) -> float:
    """The global gradient norm of a fresh vanilla RNN on sequences ``seq_len`` long."""
    gradients = gradients_at_init(seq_len, seed, spectral_radius)
    return torch.stack([g.double().norm() for g in gradients]).norm().item()
