"""Log of zero in PyTorch: a hand-written cross-entropy on softmax probabilities, its fixes and its wrong fixes;
and the log of a negative number (a Poisson rate head), which the notebook shows in a section of its own."""
import math
from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nanlab.causes.log_of_zero import (BATCH_SIZE, COUNT_FEATURES, COUNT_HIDDEN_UNITS, COUNT_LR, EPS, HIDDEN_UNITS,
                                       LOG_FLOOR, LR, MIN_PROB, NUM_CLASSES, NUM_FEATURES, make_counts, make_data)
from nanlab.frameworks.torch.loop import Training, accuracy, minibatches


def make_model() -> nn.Module:
    return nn.Sequential(OrderedDict(hidden=nn.Linear(NUM_FEATURES, HIDDEN_UNITS), relu=nn.ReLU(),
                                     logits=nn.Linear(HIDDEN_UNITS, NUM_CLASSES)))


def hand_written_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, dim=-1)
    return -(F.one_hot(y, NUM_CLASSES) * torch.log(p)).sum(dim=-1).mean()  # log(0) = -inf; 0 * -inf = nan


def clip_input_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, dim=-1)
    return -(F.one_hot(y, NUM_CLASSES) * torch.log(p.clamp(MIN_PROB, 1.0))).sum(dim=-1).mean()


def add_eps_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, dim=-1)
    return -(F.one_hot(y, NUM_CLASSES) * torch.log(p + EPS)).sum(dim=-1).mean()


def clip_log_output_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, dim=-1)
    return -(F.one_hot(y, NUM_CLASSES) * torch.log(p).clamp(LOG_FLOOR, 0.0)).sum(dim=-1).mean()


def build_training(seed: int, device: str, loss_fn, dtype: torch.dtype = torch.float32) -> Training:
    data = make_data(seed)
    model = make_model().to(device=device, dtype=dtype)
    numpy_dtype = np.float64 if dtype == torch.float64 else np.float32
    return Training(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=LR),
        loss_fn=loss_fn,
        batches=minibatches(data.x_train.astype(numpy_dtype), data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(data.x_eval.astype(numpy_dtype), data.y_eval, device),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, device, hand_written_loss)


def fused_loss(seed: int, device: str) -> Training:
    return build_training(seed, device, F.cross_entropy)  # log_softmax + nll_loss on the logits


def clip_input(seed: int, device: str) -> Training:
    return build_training(seed, device, clip_input_loss)


def add_eps(seed: int, device: str) -> Training:
    return build_training(seed, device, add_eps_loss)


def clip_log_output(seed: int, device: str) -> Training:
    return build_training(seed, device, clip_log_output_loss)


def float64(seed: int, device: str) -> Training:
    return build_training(seed, device, hand_written_loss, dtype=torch.float64)


SETTINGS = {"broken": broken, "fused-loss": fused_loss, "clip-input": clip_input, "add-eps": add_eps,
            "clip-log-output": clip_log_output, "float64": float64}


# -- log of a negative number: a count model ---------------------------------------------------------------------

def make_count_model() -> nn.Module:
    return nn.Sequential(OrderedDict(hidden=nn.Linear(COUNT_FEATURES, COUNT_HIDDEN_UNITS), relu=nn.ReLU(),
                                     head=nn.Linear(COUNT_HIDDEN_UNITS, 1)))


def hand_written_poisson_loss(rate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    rate = rate.squeeze(-1)
    return (rate - y * torch.log(rate)).mean()  # nothing keeps rate > 0: log(negative) = nan


def log_rate_poisson_loss(log_rate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.poisson_nll_loss(log_rate.squeeze(-1), y, log_input=True)  # exp(log_rate) - y * log_rate: no log


def count_error(x: np.ndarray, y: np.ndarray, device: str, log_rate_head: bool):
    """An ``evaluate`` function: the mean absolute error of the predicted rate on held-out counts."""
    features, counts = torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> float:
        output = model(features).squeeze(-1)
        rate = output.exp() if log_rate_head else output
        return (rate - counts).abs().mean().item()

    return evaluate


def build_count_training(seed: int, device: str, log_rate_head: bool) -> Training:
    data = make_counts(seed)
    model = make_count_model().to(device)
    mean_count = float(data.y_train.mean())
    with torch.no_grad():  # every prediction starts near the mean count: a sensible, positive rate
        model.head.bias.fill_(math.log(mean_count) if log_rate_head else mean_count)
    return Training(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=COUNT_LR),
        loss_fn=log_rate_poisson_loss if log_rate_head else hand_written_poisson_loss,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=count_error(data.x_eval, data.y_eval, device, log_rate_head),
    )


def rate_head(seed: int, device: str) -> Training:
    """The head outputs the rate itself; nothing keeps it above 0."""
    return build_count_training(seed, device, log_rate_head=False)


def log_rate_head(seed: int, device: str) -> Training:
    """The head outputs log(rate); the loss works in log space (the fused-loss idea for counts)."""
    return build_count_training(seed, device, log_rate_head=True)
