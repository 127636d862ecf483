"""Log of zero in PyTorch: a hand-written cross-entropy on softmax probabilities, its fixes and its wrong fixes."""
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nanlab.causes.log_of_zero import (BATCH_SIZE, EPS, HIDDEN_UNITS, LOG_FLOOR, LR, MIN_PROB, NUM_CLASSES,
                                       NUM_FEATURES, make_data)
from nanlab.frameworks.torch.loop import Training, accuracy, minibatches


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(NUM_FEATURES, HIDDEN_UNITS), nn.ReLU(), nn.Linear(HIDDEN_UNITS, NUM_CLASSES))


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
