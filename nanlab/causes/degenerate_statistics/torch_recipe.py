"""Degenerate statistics in PyTorch: a hand-written batch standardisation with torch's default (unbiased) std, fed
by a DataLoader whose last batch holds one sample, and its fixes."""
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from nanlab.causes.degenerate_statistics import (BATCH_SIZE, EPS, HIDDEN_UNITS, LR, NUM_CLASSES, NUM_FEATURES,
                                                 make_data)
from nanlab.frameworks.torch.loop import Training, accuracy


def batch_standardize(h: torch.Tensor) -> torch.Tensor:
    return (h - h.mean(dim=0)) / h.std(dim=0)  # unbiased by default: a batch of one is 0 / (1 - 1) = nan


def eps_on_std(h: torch.Tensor) -> torch.Tensor:
    return (h - h.mean(dim=0)) / (h.std(dim=0) + EPS)  # nan + eps = nan


def nan_to_zero_variance(h: torch.Tensor) -> torch.Tensor:
    variance = torch.nan_to_num(h.var(dim=0))  # a finite forward; var's backward is still 0 / 0
    return (h - h.mean(dim=0)) / torch.sqrt(variance + EPS)


def population_standardize(h: torch.Tensor) -> torch.Tensor:
    return (h - h.mean(dim=0)) / torch.sqrt(h.var(dim=0, correction=0) + EPS)  # as BatchNorm1d: one sample -> 0


class BatchStandardizedMLP(nn.Module):
    """A hidden layer whose units are standardised over the batch (a batch norm without running statistics), a
    ReLU and a linear head."""

    def __init__(self, standardize):
        super().__init__()
        self.hidden = nn.Linear(NUM_FEATURES, HIDDEN_UNITS)
        self.standardize = standardize
        self.head = nn.Linear(HIDDEN_UNITS, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.standardize(self.hidden(x))))


def make_loader(x, y, seed: int, drop_last: bool) -> DataLoader:
    """Shuffled batches of 32, reshuffled every epoch; 257 samples leave a last batch of one unless dropped."""
    return DataLoader(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), batch_size=BATCH_SIZE, shuffle=True,
                      drop_last=drop_last, generator=torch.Generator().manual_seed(seed))


def epochs(loader: DataLoader, device: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches, epoch after epoch, on ``device``."""
    while True:
        for x, y in loader:
            yield x.to(device), y.to(device)


def build_training(seed: int, device: str, standardize, drop_last: bool = False) -> Training:
    data = make_data(seed)
    model = BatchStandardizedMLP(standardize).to(device)
    return Training(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=LR),
        loss_fn=F.cross_entropy,
        batches=epochs(make_loader(data.x_train, data.y_train, seed, drop_last), device),
        evaluate=accuracy(data.x_eval, data.y_eval, device),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, device, batch_standardize)


def population_std(seed: int, device: str) -> Training:
    return build_training(seed, device, population_standardize)


def drop_last(seed: int, device: str) -> Training:
    return build_training(seed, device, batch_standardize, drop_last=True)


def eps_std(seed: int, device: str) -> Training:
    return build_training(seed, device, eps_on_std)


def nan_to_zero(seed: int, device: str) -> Training:
    return build_training(seed, device, nan_to_zero_variance)


SETTINGS = {"broken": broken, "population-std": population_std, "drop-last": drop_last, "eps-on-std": eps_std,
            "nan-to-zero": nan_to_zero}
