"""float16 norm overflow in PyTorch: a hand-written LayerNorm on float16 readings, under float16 autocast; its
fixes and two wrong fixes.

The square is written ``x * x``: autocast leaves a multiplication in its inputs' dtype on every device, while
``x.pow(2)`` would be autocast to float32 on CUDA (it is on the CUDA float32 list of the PyTorch AMP docs, not on
the CPU one), so the recipe behaves the same on both.
"""
import torch
from torch import nn

from nanlab.causes.fp16_norm_overflow import (BATCH_SIZE, CLAMP_VALUE, EPS, HIDDEN_UNITS, LARGER_EPS, LR,
                                              NUM_CLASSES, NUM_FEATURES, make_data, make_twin_data)
from nanlab.frameworks.torch.loop import Training, accuracy, minibatches


def layer_norm_statistics(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``(x - E[x]) / sqrt(Var[x] + eps)`` over the last axis, in ``x``'s own dtype, with the one-pass variance."""
    mean = x.mean(dim=-1, keepdim=True)
    variance = (x * x).mean(dim=-1, keepdim=True) - mean * mean  # float16: inf - inf = nan past |x| = 256
    return (x - mean) * torch.rsqrt(variance + eps)


class HandWrittenLayerNorm(nn.Module):
    """A LayerNorm written out, with a gain and a bias; ``float32_statistics`` upcasts before squaring."""

    def __init__(self, features: int, eps: float = EPS, float32_statistics: bool = False, clamp: float | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))
        self.eps, self.float32_statistics, self.clamp = eps, float32_statistics, clamp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.clamp is not None:
            x = x.clamp(-self.clamp, self.clamp)  # T5's clamp: no value here is anywhere near it
        if self.float32_statistics:
            normalised = layer_norm_statistics(x.float(), self.eps).to(x.dtype)  # T5LayerNorm's upcast
        else:
            normalised = layer_norm_statistics(x, self.eps)
        return normalised * self.weight + self.bias


class Autocast(nn.Module):
    """Runs ``module`` under float16 ``torch.autocast`` (as an AMP loop's forward does) and hands float32 logits to
    the loss."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.float16):
            return self.module(x).float()


def make_layers(norm: nn.Module) -> nn.Sequential:
    """The readings standardised per sample by ``norm``, then a small MLP."""
    return nn.Sequential(norm, nn.Linear(NUM_FEATURES, HIDDEN_UNITS), nn.ReLU(),
                         nn.Linear(HIDDEN_UNITS, NUM_CLASSES))


def build_training(seed: int, device: str, norm: nn.Module, float16: bool = True) -> Training:
    """The readings in float16 and the model under float16 autocast; ``float16=False``: both in float32."""
    data = make_data(seed)  # float16 readings: the norm receives float16
    x_train, x_eval = (data.x_train, data.x_eval) if float16 else (data.x_train.astype("float32"),
                                                                   data.x_eval.astype("float32"))
    model = (Autocast(make_layers(norm)) if float16 else make_layers(norm)).to(device)
    return Training(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=LR),
        loss_fn=nn.functional.cross_entropy,
        batches=minibatches(x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(x_eval, data.y_eval, device),
    )


def float32_baseline(seed: int, device: str) -> Training:
    """The broken setting's model and readings in float32: the same hand-written LayerNorm learns."""
    return build_training(seed, device, HandWrittenLayerNorm(NUM_FEATURES), float16=False)


def broken(seed: int, device: str) -> Training:
    return build_training(seed, device, HandWrittenLayerNorm(NUM_FEATURES))


def float32_statistics(seed: int, device: str) -> Training:
    return build_training(seed, device, HandWrittenLayerNorm(NUM_FEATURES, float32_statistics=True))


def framework_norm(seed: int, device: str) -> Training:
    return build_training(seed, device, nn.LayerNorm(NUM_FEATURES, eps=EPS))  # float32 statistics inside


def larger_eps(seed: int, device: str) -> Training:
    return build_training(seed, device, HandWrittenLayerNorm(NUM_FEATURES, eps=LARGER_EPS))


def clamp_activations(seed: int, device: str) -> Training:
    return build_training(seed, device, HandWrittenLayerNorm(NUM_FEATURES, clamp=CLAMP_VALUE))


# -- the quiet twin: an RMSNorm, whose overflow gives zeros instead of NaN (the notebooks; not a catalogue setting)
class T5LayerNorm(nn.Module):
    """RMSNorm as T5 writes it, ``weight * x * rsqrt(mean(x**2) + eps)``; Hugging Face's computes the variance in
    float32 (``float32_statistics=True``). The square is ``x * x`` here for the reason in the module docstring."""

    def __init__(self, features: int, eps: float = 1e-6, float32_statistics: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(features))
        self.eps, self.float32_statistics = eps, float32_statistics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float() if self.float32_statistics else x
        variance = (h * h).mean(dim=-1, keepdim=True)  # float16: inf for a row holding a value past 256
        return self.weight * (h * torch.rsqrt(variance + self.eps)).to(x.dtype)  # rsqrt(inf) = 0: a row of zeros


def rms_norm_training(seed: int, device: str, float32_statistics: bool = False) -> Training:
    """Raw-unit features (about 300 times standardised ones) -> Linear -> T5LayerNorm -> ReLU -> Linear, under
    float16 autocast: the first layer's outputs reach a few hundred and the norm sees them in float16."""
    data = make_twin_data(seed)
    layers = nn.Sequential(nn.Linear(NUM_FEATURES, HIDDEN_UNITS), T5LayerNorm(HIDDEN_UNITS, float32_statistics=
                                                                             float32_statistics),
                           nn.ReLU(), nn.Linear(HIDDEN_UNITS, NUM_CLASSES))
    model = Autocast(layers).to(device)
    return Training(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=LR),
        loss_fn=nn.functional.cross_entropy,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(data.x_eval, data.y_eval, device),
    )


SETTINGS = {"broken": broken, "float32-statistics": float32_statistics, "framework-norm": framework_norm,
            "larger-eps": larger_eps, "clamp-activations": clamp_activations}
