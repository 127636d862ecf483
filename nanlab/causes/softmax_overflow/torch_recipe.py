"""Softmax overflow in PyTorch: a hand-written softmax cross-entropy, its fixes and the logit clip."""
import torch
from torch import nn
from torch.nn import functional as F

from nanlab.causes.softmax_overflow import (BATCH_SIZE, HIDDEN_UNITS, LOGIT_LIMIT, LR, NUM_CLASSES, NUM_FEATURES,
                                            make_data)
from nanlab.frameworks.torch.loop import Training, accuracy, minibatches


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(NUM_FEATURES, HIDDEN_UNITS), nn.ReLU(), nn.Linear(HIDDEN_UNITS, NUM_CLASSES))


def hand_written_softmax(logits: torch.Tensor) -> torch.Tensor:
    e = torch.exp(logits)  # a logit above 88.72 gives inf
    return e / e.sum(dim=-1, keepdim=True)  # inf / inf = nan


def nll(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean negative log-probability of the label."""
    return -torch.log(p.gather(1, y[:, None])).mean()


def hand_written_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nll(hand_written_softmax(logits), y)


def subtract_max_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    shifted = logits - logits.max(dim=-1, keepdim=True).values  # the largest exponent is exp(0) = 1
    log_p = shifted - torch.log(torch.exp(shifted).sum(dim=-1, keepdim=True))  # the sum is >= 1: no log(0)
    return -log_p.gather(1, y[:, None]).mean()


def log_softmax_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    log_p = logits - torch.logsumexp(logits, dim=-1, keepdim=True)  # no probability is ever formed
    return -log_p.gather(1, y[:, None]).mean()


def framework_softmax_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cures the overflow but still takes log of a probability, which is exactly 0 past a logit gap of ~104."""
    return nll(torch.softmax(logits, dim=-1), y)


def clip_logits_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return hand_written_loss(logits.clamp(-LOGIT_LIMIT, LOGIT_LIMIT), y)


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
    return build_training(seed, device, hand_written_loss)


def subtract_max(seed: int, device: str) -> Training:
    return build_training(seed, device, subtract_max_loss)


def log_softmax(seed: int, device: str) -> Training:
    return build_training(seed, device, log_softmax_loss)


def fused_loss(seed: int, device: str) -> Training:
    return build_training(seed, device, F.cross_entropy)  # log_softmax + nll_loss on the logits


def clip_logits(seed: int, device: str) -> Training:
    return build_training(seed, device, clip_logits_loss)


SETTINGS = {"broken": broken, "subtract-max": subtract_max, "log-softmax": log_softmax,
            "fused-loss": fused_loss, "clip-logits": clip_logits}
