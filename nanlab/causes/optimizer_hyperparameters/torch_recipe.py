"""Optimizer hyperparameters in PyTorch: AdamW with weight_decay = 1000, its fixes, and the momentum and schedule
variants (``momentum_above_one``, ``momentum_one``, ``warmup_without_end``: shown in the notebook, not part of the
contract's settings)."""
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from nanlab.causes.optimizer_hyperparameters import (BATCH_SIZE, BROKEN_MOMENTUM, BROKEN_WEIGHT_DECAY, CAUSE,
                                                     EDGE_MOMENTUM, HIDDEN_UNITS, LR, MAX_GRAD_NORM, NUM_CLASSES,
                                                     NUM_FEATURES, PEAK_LR, SANE_MOMENTUM, SANE_WEIGHT_DECAY,
                                                     SGD_LR, WARMUP_STEPS, make_data)
from nanlab.frameworks.torch.loop import Training, accuracy, minibatches


def make_model() -> nn.Module:
    return nn.Sequential(OrderedDict(
        hidden_1=nn.Linear(NUM_FEATURES, HIDDEN_UNITS), act_1=nn.LeakyReLU(0.1),
        hidden_2=nn.Linear(HIDDEN_UNITS, HIDDEN_UNITS), act_2=nn.LeakyReLU(0.1),
        logits=nn.Linear(HIDDEN_UNITS, NUM_CLASSES),
    ))


def build_training(seed: int, device: str, make_optimizer, max_grad_norm: float | None = None) -> Training:
    data = make_data(seed)
    model = make_model().to(device)
    return Training(
        model=model,
        optimizer=make_optimizer(model.parameters()),
        loss_fn=F.cross_entropy,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(data.x_eval, data.y_eval, device),
        max_grad_norm=max_grad_norm,
    )


def broken(seed: int, device: str) -> Training:
    # each step: w <- w * (1 - LR * 1000) = -2 w, then the Adam step
    return build_training(seed, device, lambda params: torch.optim.AdamW(params, lr=LR,
                                                                         weight_decay=BROKEN_WEIGHT_DECAY))


def sane_weight_decay(seed: int, device: str) -> Training:
    return build_training(seed, device, lambda params: torch.optim.AdamW(params, lr=LR, weight_decay=SANE_WEIGHT_DECAY))


def clip_grad_norm(seed: int, device: str) -> Training:
    # the loop calls torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM) before optimizer.step()
    return build_training(seed, device, lambda params: torch.optim.AdamW(params, lr=LR,
                                                                         weight_decay=BROKEN_WEIGHT_DECAY),
                          max_grad_norm=MAX_GRAD_NORM)


def sgd_training(seed: int, device: str, momentum: float, lr: float = SGD_LR) -> Training:
    return build_training(seed, device, lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum))


def momentum_above_one(seed: int, device: str) -> Training:
    """The momentum variant: torch accepts momentum 1.05 (it refuses only a negative one)."""
    return sgd_training(seed, device, BROKEN_MOMENTUM)


def momentum_one(seed: int, device: str) -> Training:
    """Momentum exactly 1: the velocity is the sum of every past gradient."""
    return sgd_training(seed, device, EDGE_MOMENTUM)


def momentum_below_one(seed: int, device: str) -> Training:
    return sgd_training(seed, device, SANE_MOMENTUM)


def warmup_without_end(step: int) -> float:
    return (step + 1) / WARMUP_STEPS  # min(1.0, ...) forgotten: the rate keeps growing after the warmup


def warmup_without_end_training(seed: int, device: str) -> Training:
    """The schedule variant: SGD (momentum 0.9) whose rate rises by PEAK_LR / 10 every step, forever."""
    training = sgd_training(seed, device, SANE_MOMENTUM, lr=PEAK_LR)
    training.scheduler = torch.optim.lr_scheduler.LambdaLR(training.optimizer, warmup_without_end)
    return training


def decaying_schedule(seed: int, device: str) -> Training:
    """A warmup that ends at PEAK_LR, then cosine decay to 0 over the rest of the budget."""
    training = sgd_training(seed, device, SANE_MOMENTUM, lr=PEAK_LR)
    optimizer = training.optimizer
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / WARMUP_STEPS, total_iters=WARMUP_STEPS)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=CAUSE.steps - WARMUP_STEPS)
    training.scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, decay], milestones=[WARMUP_STEPS])
    return training


SETTINGS = {"broken": broken, "sane-weight-decay": sane_weight_decay, "momentum-below-one": momentum_below_one,
            "decaying-schedule": decaying_schedule, "clip-grad-norm": clip_grad_norm}
