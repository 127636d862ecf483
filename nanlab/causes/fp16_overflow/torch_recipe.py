"""fp16 overflow in PyTorch: a float16-autocast model whose first layer sees raw-unit inputs, trained with the AMP
recipe (autocast + GradScaler); its fixes and the wrong fix of a larger loss scale."""
import torch
from torch import nn

from nanlab.causes.fp16_overflow import (BATCH_SIZE, HIDDEN_UNITS, LR, NUM_CLASSES, NUM_FEATURES,
                                         RAISED_LOSS_SCALE, RAW_SCALE, make_data)
from nanlab.frameworks.torch.loop import Training, accuracy, minibatches


class Autocast(nn.Module):
    """Runs ``module`` under ``torch.autocast`` (as an AMP loop's forward does) and hands float32 logits to the
    loss."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.module(x).float()


class Float32(nn.Module):
    """Runs ``module`` in float32 even inside autocast: the "keep this layer in float32" fix."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.module(x.float())


class Rescale(nn.Module):
    """Multiplies its input by a fixed factor (no parameters)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def make_layers(first: nn.Module | None = None) -> nn.Sequential:
    """Linear -> LayerNorm -> ReLU -> Linear; LayerNorm makes float32 training indifferent to the input's scale."""
    first = first or nn.Linear(NUM_FEATURES, HIDDEN_UNITS)
    return nn.Sequential(first, nn.LayerNorm(HIDDEN_UNITS), nn.ReLU(), nn.Linear(HIDDEN_UNITS, NUM_CLASSES))


def build_training(seed: int, device: str, model: nn.Module, scaler: torch.amp.GradScaler | None) -> Training:
    data = make_data(seed)
    model = model.to(device)
    return Training(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=LR),
        loss_fn=nn.functional.cross_entropy,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(data.x_eval, data.y_eval, device),
        scaler=scaler,
    )


def broken(seed: int, device: str) -> Training:
    model = Autocast(make_layers(), torch.float16)
    return build_training(seed, device, model, torch.amp.GradScaler(device))


def bfloat16(seed: int, device: str) -> Training:
    model = Autocast(make_layers(), torch.bfloat16)
    return build_training(seed, device, model, scaler=None)  # bfloat16 has float32's range: no loss scaling


def float32_layer(seed: int, device: str) -> Training:
    model = Autocast(make_layers(Float32(nn.Linear(NUM_FEATURES, HIDDEN_UNITS))), torch.float16)
    return build_training(seed, device, model, torch.amp.GradScaler(device))


def rescale_input(seed: int, device: str) -> Training:
    first = nn.Sequential(Rescale(1 / RAW_SCALE), nn.Linear(NUM_FEATURES, HIDDEN_UNITS))
    model = Autocast(make_layers(first), torch.float16)
    return build_training(seed, device, model, torch.amp.GradScaler(device))


def raise_loss_scale(seed: int, device: str) -> Training:
    model = Autocast(make_layers(), torch.float16)
    return build_training(seed, device, model, torch.amp.GradScaler(device, init_scale=RAISED_LOSS_SCALE))


SETTINGS = {"broken": broken, "bfloat16": bfloat16, "float32-layer": float32_layer,
            "rescale-input": rescale_input, "raise-loss-scale": raise_loss_scale}
