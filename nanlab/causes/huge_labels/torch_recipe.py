"""Huge labels in PyTorch: the broken setting, its fixes, and the regression cousin (targets of order 1e10)."""
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nanlab.causes.huge_labels import (ADAM_LR, BATCH_SIZE, CAUSE, HIDDEN_UNITS, LR, NUM_CLASSES, NUM_FEATURES,
                                       REGRESSION_LR, drop_bad_labels, make_data, make_regression_data, remap_labels)
from nanlab.frameworks.torch.cuda_child import DeviceSideAssertError, raise_device_assert_from_child
from nanlab.data import Dataset, r_squared
from nanlab.frameworks.torch.loop import Training, accuracy, minibatches

# CPU: F.cross_entropy checks the target and raises IndexError("Target 8000 is out of bounds.") (torch 2.13).
EXPECTED_ERRORS = (IndexError, DeviceSideAssertError)


def make_model(num_inputs: int, num_outputs: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(num_inputs, HIDDEN_UNITS), nn.ReLU(),
        nn.Linear(HIDDEN_UNITS, HIDDEN_UNITS), nn.ReLU(),
        nn.Linear(HIDDEN_UNITS, num_outputs),
    )


def build_training(data: Dataset, num_classes: int, seed: int, device: str) -> Training:
    model = make_model(NUM_FEATURES, num_classes).to(device)
    return Training(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=LR),
        loss_fn=F.cross_entropy,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(data.x_eval, data.y_eval, device),
    )


def broken_training(seed: int, device: str) -> Training:
    return build_training(make_data(seed), NUM_CLASSES, seed, device)  # one training label is 8000


def broken(seed: int, device: str) -> Training:
    if device == "cuda":
        # A device-side assert poisons this process's CUDA context: let a child process take it (untested here).
        raise_device_assert_from_child(__name__, seed, CAUSE.steps)
    return broken_training(seed, device)


def drop_bad(seed: int, device: str) -> Training:
    return build_training(drop_bad_labels(make_data(seed), NUM_CLASSES), NUM_CLASSES, seed, device)


def remap(seed: int, device: str) -> Training:
    data, classes = remap_labels(make_data(seed))  # classes == [0, 1, 2, 3, 4, 8000]
    return build_training(data, len(classes), seed, device)


SETTINGS = {"broken": broken, "drop-bad-labels": drop_bad, "remap-labels": remap}


def r_squared_of(x: np.ndarray, y: np.ndarray, device: str, mean: float = 0.0, std: float = 1.0):
    """An ``evaluate`` function: R² of the model's predictions, un-standardised by ``mean``/``std``, against ``y``."""
    features = torch.as_tensor(x, device=device)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> float:
        return r_squared(model(features).cpu().numpy() * std + mean, y)

    return evaluate


def regression_training(data: Dataset, seed: int, device: str, mean: float = 0.0, std: float = 1.0,
                        adam: bool = False) -> Training:
    model = make_model(data.x_train.shape[1], 1).to(device)
    optimizer = (torch.optim.Adam(model.parameters(), lr=ADAM_LR) if adam
                 else torch.optim.SGD(model.parameters(), lr=REGRESSION_LR))
    return Training(
        model=model,
        optimizer=optimizer,
        loss_fn=F.mse_loss,
        batches=minibatches(data.x_train, (data.y_train - mean) / std, BATCH_SIZE, seed, device),
        evaluate=r_squared_of(data.x_eval, data.y_eval, device, mean, std),
    )


def regression_broken(seed: int, device: str) -> Training:
    return regression_training(make_regression_data(seed), seed, device)  # targets ~1e10, trained as they are


def regression_standardised(seed: int, device: str) -> Training:
    data = make_regression_data(seed)
    mean, std = float(data.y_train.mean()), float(data.y_train.std())  # training-set statistics only
    return regression_training(data, seed, device, mean, std)  # predictions * std + mean in evaluate


def regression_adam(seed: int, device: str) -> Training:
    # Adam moves each weight by about lr per step whatever the gradient's size: no overflow, and no way to 1e10
    return regression_training(make_regression_data(seed), seed, device, adam=True)


REGRESSION_SETTINGS = {"broken": regression_broken, "standardise-targets": regression_standardised,
                       "adam": regression_adam}
