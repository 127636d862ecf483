"""Attention-logit growth in PyTorch: one self-attention layer under float16 autocast, its query and key projections
in a parameter group at 100 times the model's rate; its fixes and the soft-cap that only hides it."""
import math

import torch
from torch import nn

from nanlab.causes.attention_logit_growth import (BATCH_SIZE, LR, MODEL_DIM, NUM_CLASSES, NUM_FEATURES,
                                                  QK_LR_MULTIPLIER, SOFT_CAP, WARMUP_STEPS, make_data)
from nanlab.frameworks.torch.loop import Training, accuracy, minibatches


class SelfAttention(nn.Module):
    """Single-head self-attention written out: ``softmax(q k^T / sqrt(d)) v``, with an optional LayerNorm on the
    queries and keys (QK-layernorm) and an optional soft-cap of the logits."""

    def __init__(self, dim: int, qk_norm: bool = False, soft_cap: float | None = None):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.query_norm = nn.LayerNorm(dim) if qk_norm else nn.Identity()
        self.key_norm = nn.LayerNorm(dim) if qk_norm else nn.Identity()
        self.soft_cap, self.scale = soft_cap, 1.0 / math.sqrt(dim)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        q, k = self.query_norm(self.query(h)), self.key_norm(self.key(h))
        logits = q @ k.transpose(-1, -2) * self.scale  # float16 under autocast: inf past 65504
        if self.soft_cap is not None:
            logits = self.soft_cap * torch.tanh(logits / self.soft_cap)  # Gemma 2's cap, after the product
        return logits

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(h), dim=-1) @ self.value(h)  # a row holding inf: inf - inf = nan


class AttentionClassifier(nn.Module):
    """Tokens -> a linear embedding -> self-attention -> the mean over the sequence -> a linear head; the forward
    pass under float16 autocast (as an AMP loop's is), the logits handed to the loss in float32."""

    def __init__(self, qk_norm: bool = False, soft_cap: float | None = None):
        super().__init__()
        self.embed = nn.Linear(NUM_FEATURES + 1, MODEL_DIM)
        self.attention = SelfAttention(MODEL_DIM, qk_norm, soft_cap)
        self.head = nn.Linear(MODEL_DIM, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.float16):
            return self.head(self.attention(self.embed(x)).mean(dim=1)).float()


def parameter_groups(model: AttentionClassifier, qk_lr: float) -> list[dict]:
    """The query and key projections at ``qk_lr``, every other parameter at ``LR``."""
    attention = model.attention
    qk = [*attention.query.parameters(), *attention.key.parameters()]
    chosen = {id(p) for p in qk}
    return [{"params": qk, "lr": qk_lr}, {"params": [p for p in model.parameters() if id(p) not in chosen]}]


def build_training(seed: int, device: str, qk_lr: float = LR * QK_LR_MULTIPLIER, warmup: int = 0,
                   **attention) -> Training:
    data = make_data(seed)
    model = AttentionClassifier(**attention).to(device)
    optimizer = torch.optim.Adam(parameter_groups(model, qk_lr), lr=LR)
    scheduler = (torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
                 if warmup else None)
    return Training(
        model=model,
        optimizer=optimizer,
        loss_fn=nn.functional.cross_entropy,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(data.x_eval, data.y_eval, device),
        scheduler=scheduler,
    )


def broken(seed: int, device: str) -> Training:
    return build_training(seed, device)


def qk_layernorm(seed: int, device: str) -> Training:
    return build_training(seed, device, qk_norm=True)


def lower_rate_warmup(seed: int, device: str) -> Training:
    return build_training(seed, device, qk_lr=LR, warmup=WARMUP_STEPS)


def soft_cap(seed: int, device: str) -> Training:
    return build_training(seed, device, soft_cap=SOFT_CAP)


SETTINGS = {"broken": broken, "qk-layernorm": qk_layernorm, "lower-rate-warmup": lower_rate_warmup,
            "soft-cap": soft_cap}
