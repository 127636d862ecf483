"""Bad initialisation in PyTorch: a 20-layer ReLU MLP with N(0, 1) weights, its fixes and the vanishing twin."""
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from nanlab.causes.bad_initialisation import (BAD_STD, BATCH_NORM_LR, BATCH_SIZE, DEPTH, LR, MOMENTUM, NUM_CLASSES,
                                              NUM_FEATURES, SMALL_STD, WIDTH, make_data)
from nanlab.frameworks.torch.loop import Training, accuracy, minibatches

Initializer = Callable[[torch.Tensor], None]


def make_model(init: Initializer, batch_norm: bool = False, depth: int = DEPTH, width: int = WIDTH) -> nn.Module:
    """``depth`` x (Linear -> [BatchNorm] -> ReLU), then a linear head; ``init(weight)`` initialises every weight."""
    layers, fan_in = [], NUM_FEATURES
    for _ in range(depth):
        layers.append(nn.Linear(fan_in, width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU())
        fan_in = width
    model = nn.Sequential(*layers, nn.Linear(fan_in, NUM_CLASSES))
    for module in model.modules():
        if isinstance(module, nn.Linear):
            init(module.weight)
            nn.init.zeros_(module.bias)
    return model


def standard_normal(weight: torch.Tensor) -> None:
    nn.init.normal_(weight, 0.0, BAD_STD)  # what torch.randn(fan_out, fan_in) as a weight gives


def he_normal(weight: torch.Tensor) -> None:
    nn.init.kaiming_normal_(weight, nonlinearity="relu")  # std sqrt(2 / fan_in) = 0.18 for 64 inputs


def small_normal(weight: torch.Tensor) -> None:
    nn.init.normal_(weight, 0.0, SMALL_STD)


def build_training(seed: int, device: str, init: Initializer, batch_norm: bool = False, lr: float = LR) -> Training:
    data = make_data(seed)
    model = make_model(init, batch_norm).to(device)
    return Training(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM),
        loss_fn=F.cross_entropy,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(data.x_eval, data.y_eval, device),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, device, standard_normal)


def he_init(seed: int, device: str) -> Training:
    return build_training(seed, device, he_normal)


def batch_norm(seed: int, device: str) -> Training:
    return build_training(seed, device, standard_normal, batch_norm=True, lr=BATCH_NORM_LR)


def small_init(seed: int, device: str) -> Training:
    return build_training(seed, device, small_normal)


SETTINGS = {"broken": broken, "he-init": he_init, "batch-norm": batch_norm, "small-init": small_init}
