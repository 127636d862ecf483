"""Division by zero in PyTorch: a class-balanced loss divided by per-class counts, its fixes and the where() trap."""
import torch
from torch import nn
from torch.nn import functional as F

from nanlab.causes.division_by_zero import (BATCH_SIZE, EPS, HIDDEN_UNITS, LR, NUM_CLASSES, NUM_FEATURES,
                                            make_data)
from nanlab.frameworks.torch.loop import Training, accuracy, minibatches


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(NUM_FEATURES, HIDDEN_UNITS), nn.ReLU(), nn.Linear(HIDDEN_UNITS, NUM_CLASSES))


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


def build_training(seed: int, device: str, loss_fn) -> Training:
    data = make_data(seed)
    model = make_model().to(device)
    return Training(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=LR),
        loss_fn=loss_fn,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(data.x_eval, data.y_eval, device),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, device, class_balanced_loss)


def eps_denominator(seed: int, device: str) -> Training:
    return build_training(seed, device, eps_denominator_loss)


def guard_count(seed: int, device: str) -> Training:
    return build_training(seed, device, guard_count_loss)


def safe_divide(seed: int, device: str) -> Training:
    return build_training(seed, device, safe_divide_loss)


def where_guard(seed: int, device: str) -> Training:
    return build_training(seed, device, where_guard_loss)


SETTINGS = {"broken": broken, "eps-denominator": eps_denominator, "guard-count": guard_count,
            "safe-divide": safe_divide, "where-guard": where_guard}
