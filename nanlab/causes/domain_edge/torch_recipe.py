"""Domain edge in PyTorch: an ArcFace head on 2-D features, its acos at the edge of its domain, and the fixes."""
import math

import torch
from torch import nn
from torch.nn import functional as F

from nanlab.causes.domain_edge import (BATCH_SIZE, BELOW_THRESHOLD, EMBEDDING_DIM, EPS, HIDDEN_UNITS, LR, MARGIN,
                                       NUM_CLASSES, NUM_FEATURES, SCALE, THRESHOLD, class_directions, make_data)
from nanlab.frameworks.torch.loop import Training, accuracy, minibatches


def hand_written_margin(cosine: torch.Tensor) -> torch.Tensor:
    return torch.cos(torch.acos(cosine) + MARGIN)  # acos(1.0000001) = nan; at exactly +-1 its gradient is -inf


def clamp_eps_margin(cosine: torch.Tensor) -> torch.Tensor:
    return torch.cos(torch.acos(cosine.clamp(-1 + EPS, 1 - EPS)) + MARGIN)


def no_acos_margin(cosine: torch.Tensor) -> torch.Tensor:
    sine = torch.sqrt((1 - cosine * cosine).clamp(min=EPS))  # sin(theta) >= 0 for theta in [0, pi]
    return cosine * math.cos(MARGIN) - sine * math.sin(MARGIN)


def clamp_unit_margin(cosine: torch.Tensor) -> torch.Tensor:
    return torch.cos(torch.acos(cosine.clamp(-1.0, 1.0)) + MARGIN)  # finite forward, -inf gradient at +-1


class CosineClassifier(nn.Module):
    """An MLP to a 2-D embedding, then the cosine between the unit embedding and each unit class weight."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(NUM_FEATURES, HIDDEN_UNITS), nn.ReLU(),
                                  nn.Linear(HIDDEN_UNITS, EMBEDDING_DIM))
        self.class_weights = nn.Parameter(torch.as_tensor(class_directions()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.body(x), dim=-1) @ F.normalize(self.class_weights, dim=-1).T


def arcface_loss(margin):
    """Cross-entropy of s * cos(theta + m) for the target class and s * cos(theta) for the others (ArcFace)."""

    def loss_fn(cosine: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with_margin = torch.where(cosine > THRESHOLD, margin(cosine), cosine - BELOW_THRESHOLD)
        is_target = F.one_hot(target, NUM_CLASSES).bool()
        return F.cross_entropy(SCALE * torch.where(is_target, with_margin, cosine), target)

    return loss_fn


def build_training(seed: int, device: str, margin) -> Training:
    data = make_data(seed)
    model = CosineClassifier().to(device)
    return Training(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=LR),
        loss_fn=arcface_loss(margin),
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(data.x_eval, data.y_eval, device),  # the class whose weight is nearest in angle
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, device, hand_written_margin)


def clamp_eps(seed: int, device: str) -> Training:
    return build_training(seed, device, clamp_eps_margin)


def no_acos(seed: int, device: str) -> Training:
    return build_training(seed, device, no_acos_margin)


def clamp_unit(seed: int, device: str) -> Training:
    return build_training(seed, device, clamp_unit_margin)


SETTINGS = {"broken": broken, "clamp-eps": clamp_eps, "no-acos": no_acos, "clamp-unit": clamp_unit}
