"""Masked attention in PyTorch: attention pooling with a padding mask of -inf, its fixes and nan_to_num."""
import math

import torch
from torch import nn
from torch.nn import functional as F

from nanlab.causes.masked_attention import (BATCH_SIZE, KEY_UNITS, LR, MASK_VALUE, NUM_CLASSES, NUM_FEATURES,
                                            make_data)
from nanlab.frameworks.torch.loop import Training, accuracy, minibatches


def mask_bias(valid: torch.Tensor, masked_value: float = -math.inf) -> torch.Tensor:
    """The additive attention mask: 0 for valid keys, ``masked_value`` for the others (nn.MultiheadAttention
    turns a boolean key_padding_mask into such a float mask and adds it to the scores)."""
    return torch.zeros(valid.shape, device=valid.device).masked_fill(~valid, masked_value)


def masked_softmax(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores + mask_bias(valid), dim=-1)  # no valid key: all -inf, nan weights


def finite_mask_softmax(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores + mask_bias(valid, MASK_VALUE), dim=-1)


def guarded_softmax(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    has_key = valid.any(dim=-1, keepdim=True)
    weights = torch.softmax(scores + mask_bias(valid | ~has_key), dim=-1)  # rows with no valid key: unmasked
    return weights * has_key  # ... and weighted by 0


def nan_to_num_softmax(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(masked_softmax(scores, valid))


class AttentionPooling(nn.Module):
    """A learned query attends over the valid tokens; the weighted sum of their values goes to a linear head."""

    def __init__(self, softmax):
        super().__init__()
        self.keys = nn.Linear(NUM_FEATURES, KEY_UNITS)
        self.values = nn.Linear(NUM_FEATURES, KEY_UNITS)
        self.query = nn.Parameter(torch.randn(KEY_UNITS) / math.sqrt(KEY_UNITS))
        self.softmax = softmax
        self.head = nn.Linear(KEY_UNITS, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, valid = x[..., :NUM_FEATURES], x[..., NUM_FEATURES] > 0
        scores = self.keys(tokens) @ self.query / math.sqrt(KEY_UNITS)
        weights = self.softmax(scores, valid)
        return self.head((weights[..., None] * self.values(tokens)).sum(dim=1))


def build_training(seed: int, device: str, softmax) -> Training:
    data = make_data(seed)
    model = AttentionPooling(softmax).to(device)
    return Training(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=LR),
        loss_fn=F.cross_entropy,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(data.x_eval, data.y_eval, device),
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, device, masked_softmax)


def finite_mask(seed: int, device: str) -> Training:
    return build_training(seed, device, finite_mask_softmax)


def guard_empty_rows(seed: int, device: str) -> Training:
    return build_training(seed, device, guarded_softmax)


def nan_to_num(seed: int, device: str) -> Training:
    return build_training(seed, device, nan_to_num_softmax)


SETTINGS = {"broken": broken, "finite-mask": finite_mask, "guard-empty-rows": guard_empty_rows,
            "nan-to-num": nan_to_num}
