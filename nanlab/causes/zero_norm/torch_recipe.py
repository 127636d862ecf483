"""Zero norm in PyTorch: an L2-normalised embedding of rows that can be all zero, and its fixes."""
import torch
from torch import nn
from torch.nn import functional as F

from nanlab.causes.zero_norm import (BATCH_SIZE, EMBEDDING_UNITS, EPS, LR, NUM_CLASSES, NUM_FEATURES, make_data)
from nanlab.frameworks.torch.loop import Training, accuracy, minibatches


def hand_written_normalize(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True))  # an all-zero row: 0 * rsqrt(0) = 0 * inf = nan


def eps_denominator_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm(dim=-1, keepdim=True) + EPS)


def framework_normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)  # x / max(||x||, 1e-12)


class NormalizedEmbeddingClassifier(nn.Module):
    """A bias-free embedding scaled to unit length (a cosine classifier's body), then a linear head."""

    def __init__(self, normalize):
        super().__init__()
        self.embed = nn.Linear(NUM_FEATURES, EMBEDDING_UNITS, bias=False)  # an all-zero row stays all zero
        self.normalize = normalize
        self.head = nn.Linear(EMBEDDING_UNITS, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.normalize(self.embed(x)))


def build_training(seed: int, device: str, normalize) -> Training:
    data = make_data(seed)
    model = NormalizedEmbeddingClassifier(normalize).to(device)
    return Training(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=LR),
        loss_fn=F.cross_entropy,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(data.x_eval, data.y_eval, device),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, device, hand_written_normalize)


def eps_denominator(seed: int, device: str) -> Training:
    return build_training(seed, device, eps_denominator_normalize)


def normalize(seed: int, device: str) -> Training:
    return build_training(seed, device, framework_normalize)


SETTINGS = {"broken": broken, "eps-denominator": eps_denominator, "framework-normalize": normalize}
