"""Symmetric labels in PyTorch: the broken setting, the fix, and the hand-written gather that hides the problem."""
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nanlab.frameworks.torch.cuda_child import DeviceSideAssertError, raise_device_assert_from_child
from nanlab.causes.symmetric_labels import (BATCH_SIZE, CAUSE, HIDDEN_UNITS, LR, NUM_CLASSES, NUM_FEATURES,
                                            make_data, map_labels)
from nanlab.data import Dataset
from nanlab.frameworks.torch.loop import Training, accuracy, minibatches

# CPU: F.cross_entropy raises IndexError("Target -1 is out of bounds.") (torch 2.13).
EXPECTED_ERRORS = (IndexError, DeviceSideAssertError)


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(NUM_FEATURES, HIDDEN_UNITS), nn.ReLU(),
        nn.Linear(HIDDEN_UNITS, NUM_CLASSES),
    )


def build_training(data: Dataset, seed: int, device: str, loss_fn=F.cross_entropy) -> Training:
    model = make_model().to(device)
    return Training(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=LR),
        loss_fn=loss_fn,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(data.x_eval, data.y_eval, device),
    )


def broken_training(seed: int, device: str) -> Training:
    return build_training(make_data(seed), seed, device)  # labels -1, 0, 1


def broken(seed: int, device: str) -> Training:
    if device == "cuda":
        # A device-side assert poisons this process's CUDA context: let a child process take it (untested here).
        raise_device_assert_from_child(__name__, seed, CAUSE.steps)
    return broken_training(seed, device)


def map_to_indices(seed: int, device: str) -> Training:
    data, classes = map_labels(make_data(seed))  # classes == [-1, 0, 1]: classes[prediction] for display
    return build_training(data, seed, device)


def gathered_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy written by hand; Python-style indexing turns label -1 into the last class."""
    log_probs = F.log_softmax(logits, dim=-1)
    return -log_probs[torch.arange(len(labels)), labels].mean()


def wrapping_gather(seed: int, device: str) -> Training:
    return build_training(make_data(seed), seed, device, loss_fn=gathered_cross_entropy)


SETTINGS = {"broken": broken, "map-labels": map_to_indices, "wrapping-gather": wrapping_gather}


def binary_minus_one(seed: int, device: str) -> Training:
    """Binary cross-entropy (with logits) fed targets -1 and 1: the loss is unbounded below for target -1."""
    data = make_data(seed)
    keep_train, keep_eval = data.y_train != 0, data.y_eval != 0
    x_eval = torch.as_tensor(data.x_eval[keep_eval], device=device)
    positive = torch.as_tensor(data.y_eval[keep_eval] > 0, device=device)
    model = nn.Sequential(nn.Linear(NUM_FEATURES, HIDDEN_UNITS), nn.ReLU(), nn.Linear(HIDDEN_UNITS, 1)).to(device)
    return Training(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=LR),
        loss_fn=lambda logits, y: F.binary_cross_entropy_with_logits(logits[:, 0], y),
        batches=minibatches(data.x_train[keep_train], data.y_train[keep_train].astype(np.float32), BATCH_SIZE,
                            seed, device),
        evaluate=lambda model: ((model(x_eval)[:, 0] > 0) == positive).float().mean().item(),
    )
