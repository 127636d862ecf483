"""High learning rate in PyTorch: the broken setting and its fixes."""
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from nanlab.causes.high_learning_rate import (BATCH_SIZE, BROKEN_LR, CAUSE, HIDDEN_UNITS, MAX_GRAD_NORM,
                                              NUM_CLASSES, NUM_FEATURES, SANE_LR, WARMUP_STEPS, make_data)
from nanlab.frameworks.torch.loop import Training, accuracy, lr_range_test, minibatches


def make_model() -> nn.Module:
    return nn.Sequential(OrderedDict(
        hidden_1=nn.Linear(NUM_FEATURES, HIDDEN_UNITS), act_1=nn.LeakyReLU(0.1),
        hidden_2=nn.Linear(HIDDEN_UNITS, HIDDEN_UNITS), act_2=nn.LeakyReLU(0.1),
        logits=nn.Linear(HIDDEN_UNITS, NUM_CLASSES),
    ))


def build_training(seed: int, device: str, lr: float, max_grad_norm: float | None = None) -> Training:
    data = make_data(seed)
    model = make_model().to(device)
    return Training(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr),
        loss_fn=F.cross_entropy,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(data.x_eval, data.y_eval, device),
        max_grad_norm=max_grad_norm,
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, device, lr=BROKEN_LR)


def lower_lr(seed: int, device: str) -> Training:
    return build_training(seed, device, lr=SANE_LR)


def clip_grad_norm(seed: int, device: str) -> Training:
    # the loop calls torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM) after backward()
    return build_training(seed, device, lr=BROKEN_LR, max_grad_norm=MAX_GRAD_NORM)


def lr_finder(seed: int, device: str) -> Training:
    training = build_training(seed, device, lr=BROKEN_LR)
    found_lr = lr_range_test(training)  # restores the weights it trained on
    for group in training.optimizer.param_groups:
        group["lr"] = found_lr
    return training


def warmup_to_broken_lr(seed: int, device: str) -> Training:
    """Not a fix (the notebook's warmup section): the broken rate, reached by a linear warmup, then cosine decay."""
    training = build_training(seed, device, lr=BROKEN_LR)
    optimizer = training.optimizer
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / WARMUP_STEPS, total_iters=WARMUP_STEPS)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=CAUSE.steps - WARMUP_STEPS)
    training.scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, decay], milestones=[WARMUP_STEPS])
    return training


SETTINGS = {"broken": broken, "lower-lr": lower_lr, "clip-grad-norm": clip_grad_norm, "lr-finder": lr_finder}
