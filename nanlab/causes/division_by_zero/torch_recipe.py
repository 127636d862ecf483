"""Division by zero in PyTorch: a class-balanced loss divided by per-class counts, its fixes and the where() trap."""
from collections import OrderedDict
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nanlab.causes.division_by_zero import (BATCH_SIZE, EPS, HIDDEN_UNITS, LR, NUM_CLASSES, NUM_FEATURES,
                                            balanced_batch_indices, make_data)
from nanlab.frameworks.torch.loop import Batch, Training, accuracy, minibatches


def make_model() -> nn.Module:
    return nn.Sequential(OrderedDict(hidden=nn.Linear(NUM_FEATURES, HIDDEN_UNITS), relu=nn.ReLU(),
                                     logits=nn.Linear(HIDDEN_UNITS, NUM_CLASSES)))


def class_sums_and_counts(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class: the summed cross-entropy of its samples in the batch, and how many samples it has (maybe 0)."""
    losses = F.cross_entropy(logits, y, reduction="none")
    one_hot = F.one_hot(y, NUM_CLASSES).to(losses.dtype)
    return one_hot.T @ losses, one_hot.sum(dim=0)


def class_balanced_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    sums, counts = class_sums_and_counts(logits, y)
    return (sums / counts).mean()  # a class absent from the batch: 0 / 0 = nan


def eps_denominator_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    sums, counts = class_sums_and_counts(logits, y)
    return (sums / (counts + EPS)).mean()


def guard_count_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    sums, counts = class_sums_and_counts(logits, y)
    return (sums / counts.clamp(min=1)).mean()


def divide_no_nan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """tf.math.divide_no_nan for PyTorch: a / b, and 0 where b == 0, with a finite gradient (the double where)."""
    zero = b == 0
    return torch.where(zero, 0.0, a / torch.where(zero, 1.0, b))


def safe_divide_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    sums, counts = class_sums_and_counts(logits, y)
    return divide_no_nan(sums, counts).mean()


def where_guard_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    sums, counts = class_sums_and_counts(logits, y)
    return torch.where(counts == 0, 0.0, sums / counts).mean()  # finite value, nan gradient


def balanced_minibatches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, device: str) -> Iterator[Batch]:
    """Like ``minibatches``, but every batch holds ``batch_size // NUM_CLASSES`` samples of each class."""
    features, targets = torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)
    for index in balanced_batch_indices(y, batch_size, seed):
        index = torch.as_tensor(index, device=device)
        yield features[index], targets[index]


def build_training(seed: int, device: str, loss_fn, batch_size: int = BATCH_SIZE, balanced: bool = False) -> Training:
    data = make_data(seed)
    model = make_model().to(device)
    sampler = balanced_minibatches if balanced else minibatches
    return Training(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=LR),
        loss_fn=loss_fn,
        batches=sampler(data.x_train, data.y_train, batch_size, seed, device),
        evaluate=accuracy(data.x_eval, data.y_eval, device),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, device, class_balanced_loss)


def eps_denominator(seed: int, device: str) -> Training:
    return build_training(seed, device, eps_denominator_loss)


def guard_count(seed: int, device: str) -> Training:
    return build_training(seed, device, guard_count_loss)


def balanced_batches(seed: int, device: str) -> Training:
    return build_training(seed, device, class_balanced_loss, balanced=True)  # the same loss; no count is ever 0


def safe_divide(seed: int, device: str) -> Training:
    return build_training(seed, device, safe_divide_loss)


def where_guard(seed: int, device: str) -> Training:
    return build_training(seed, device, where_guard_loss)


SETTINGS = {"broken": broken, "eps-denominator": eps_denominator, "guard-count": guard_count,
            "balanced-batches": balanced_batches, "safe-divide": safe_divide, "where-guard": where_guard}
