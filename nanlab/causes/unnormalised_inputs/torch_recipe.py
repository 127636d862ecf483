"""Unnormalised inputs in PyTorch: an MSE regressor on raw 0-255 pixels with SGD, its fixes and the low-rate
patch."""
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nanlab.causes.unnormalised_inputs import (BATCH_SIZE, LOW_LR, LR, NUM_FEATURES, make_data,
                                               scale_to_unit, standardise)
from nanlab.data import Dataset, r_squared
from nanlab.frameworks.torch.loop import Training, minibatches


def make_model(input_normalisation: bool = False) -> nn.Module:
    layers = [nn.Linear(NUM_FEATURES, 1)]  # linear regression: the loss is an exact quadratic in the weights
    if input_normalisation:
        layers.insert(0, nn.BatchNorm1d(NUM_FEATURES))  # standardises each feature with batch statistics
    return nn.Sequential(*layers)


def held_out_r_squared(x: np.ndarray, y: np.ndarray, device: str) -> Callable[[nn.Module], float]:
    features = torch.as_tensor(x, device=device)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> float:
        return r_squared(model(features).cpu().numpy(), y)

    return evaluate


def build_training(data: Dataset, seed: int, device: str, lr: float = LR,
                   input_normalisation: bool = False) -> Training:
    model = make_model(input_normalisation).to(device)
    return Training(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr),
        loss_fn=F.mse_loss,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=held_out_r_squared(data.x_eval, data.y_eval, device),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(make_data(seed), seed, device)


def scale(seed: int, device: str) -> Training:
    return build_training(scale_to_unit(make_data(seed)), seed, device)


def standardised(seed: int, device: str) -> Training:
    return build_training(standardise(make_data(seed)), seed, device)


def normalisation_layer(seed: int, device: str) -> Training:
    return build_training(make_data(seed), seed, device, input_normalisation=True)


def lower_lr(seed: int, device: str) -> Training:
    return build_training(make_data(seed), seed, device, lr=LOW_LR)


SETTINGS = {"broken": broken, "scale-to-unit": scale, "standardise": standardised,
            "input-normalisation-layer": normalisation_layer, "lower-lr": lower_lr}
