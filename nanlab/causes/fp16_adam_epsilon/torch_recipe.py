"""Adam's epsilon in float16, PyTorch: a ``model.half()`` MLP with Adam's default ``eps=1e-8``, and its fixes."""
import numpy as np
import torch
from torch import nn

from nanlab.causes.fp16_adam_epsilon import (BATCH_SIZE, BROKEN_EPS, HIDDEN_UNITS, LR, NUM_CLASSES, NUM_FEATURES,
                                             SAFE_EPS, make_data)
from nanlab.frameworks.torch.loop import Training, accuracy, minibatches


class Autocast(nn.Module):
    """Runs ``module`` under float16 ``torch.autocast`` (an AMP forward) and hands float32 logits to the loss."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.float16):
            return self.module(x).float()


def make_model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(NUM_FEATURES, HIDDEN_UNITS), nn.ReLU(), nn.Linear(HIDDEN_UNITS, NUM_CLASSES))


def float16_training(seed: int, device: str, eps: float) -> Training:
    data = make_data(seed)
    model = make_model().to(device).half()  # float16 weights, so Adam's m and v are float16 too
    return Training(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=LR, eps=eps),
        loss_fn=nn.functional.cross_entropy,
        batches=minibatches(data.x_train.astype(np.float16), data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(data.x_eval.astype(np.float16), data.y_eval, device),
    )


def broken(seed: int, device: str) -> Training:
    return float16_training(seed, device, BROKEN_EPS)


def larger_eps(seed: int, device: str) -> Training:
    return float16_training(seed, device, SAFE_EPS)


def float32_master_weights(seed: int, device: str) -> Training:
    data = make_data(seed)
    model = Autocast(make_model()).to(device)  # float32 parameters; autocast computes in float16
    return Training(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=LR, eps=BROKEN_EPS),  # the same eps, now in float32
        loss_fn=nn.functional.cross_entropy,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(data.x_eval, data.y_eval, device),
        scaler=torch.amp.GradScaler(device),
    )


SETTINGS = {"broken": broken, "larger-eps": larger_eps, "float32-master-weights": float32_master_weights}
