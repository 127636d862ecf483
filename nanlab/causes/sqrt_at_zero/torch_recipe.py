"""Square root at zero in PyTorch: std pooling over time written as sqrt(var), and its fixes."""
import torch
from torch import nn
from torch.nn import functional as F

from nanlab.causes.sqrt_at_zero import (BATCH_SIZE, EPS, HIDDEN_UNITS, LR, NUM_CLASSES, NUM_FEATURES, make_data)
from nanlab.frameworks.torch.loop import Training, accuracy, minibatches


def variance_over_time(h: torch.Tensor) -> torch.Tensor:
    return ((h - h.mean(dim=1, keepdim=True)) ** 2).mean(dim=1)


def hand_written_std(h: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(variance_over_time(h))  # finite at 0; its gradient there is inf * 0 = nan


def eps_under_root_std(h: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(variance_over_time(h) + EPS)


def safe_sqrt_std(h: torch.Tensor) -> torch.Tensor:
    var = variance_over_time(h)
    positive = var > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, var, 1.0)), 0.0)  # no sqrt ever sees a 0


class StdPoolingClassifier(nn.Module):
    """Each time step through a linear layer, then the standard deviation over time of every unit, then a head."""

    def __init__(self, std):
        super().__init__()
        self.step = nn.Linear(NUM_FEATURES, HIDDEN_UNITS)
        self.std = std
        self.head = nn.Linear(HIDDEN_UNITS, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.std(self.step(x)))


def build_training(seed: int, device: str, std) -> Training:
    data = make_data(seed)
    model = StdPoolingClassifier(std).to(device)
    return Training(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=LR),
        loss_fn=F.cross_entropy,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(data.x_eval, data.y_eval, device),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, device, hand_written_std)


def eps_under_root(seed: int, device: str) -> Training:
    return build_training(seed, device, eps_under_root_std)


def safe_sqrt(seed: int, device: str) -> Training:
    return build_training(seed, device, safe_sqrt_std)


SETTINGS = {"broken": broken, "eps-under-root": eps_under_root, "safe-sqrt": safe_sqrt}
