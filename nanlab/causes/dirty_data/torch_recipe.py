"""Dirty data in PyTorch: a NaN and an Inf record in the training set, three ways to clean it, one to hide it."""
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from nanlab.causes.dirty_data import (BATCH_SIZE, HIDDEN_UNITS, LR, NUM_CLASSES, NUM_FEATURES, drop_corrupt_records,
                                      impute_corrupt_values, make_data)
from nanlab.data import Dataset
from nanlab.frameworks.torch.loop import Training, accuracy, minibatches


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(NUM_FEATURES, HIDDEN_UNITS), nn.ReLU(), nn.Linear(HIDDEN_UNITS, NUM_CLASSES))


def build_training(data: Dataset, seed: int, device: str, loss_fn=F.cross_entropy, batches=None) -> Training:
    model = make_model().to(device)
    return Training(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=LR),
        loss_fn=loss_fn,
        batches=batches or minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(data.x_eval, data.y_eval, device),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(make_data(seed), seed, device)


def drop_corrupt(seed: int, device: str) -> Training:
    return build_training(drop_corrupt_records(make_data(seed)), seed, device)


def impute_corrupt(seed: int, device: str) -> Training:
    return build_training(impute_corrupt_values(make_data(seed)), seed, device)


def skip_corrupt(batches: Iterator) -> Iterator:
    """Validate each batch as it loads: records with a non-finite feature never reach the model."""
    for x, y in batches:
        finite = torch.isfinite(x).flatten(start_dim=1).all(dim=1)
        yield x[finite], y[finite]


def skip_in_loader(seed: int, device: str) -> Training:
    data = make_data(seed)
    batches = skip_corrupt(minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device))
    return build_training(data, seed, device, batches=batches)


def nan_to_num_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(F.cross_entropy(logits, y))  # prints 0.0 for the bad batch; its gradient is still NaN


def nan_to_num(seed: int, device: str) -> Training:
    return build_training(make_data(seed), seed, device, loss_fn=nan_to_num_loss)


SETTINGS = {"broken": broken, "drop-corrupt-records": drop_corrupt, "impute-corrupt-values": impute_corrupt,
            "skip-in-loader": skip_in_loader, "nan-to-num-loss": nan_to_num}
