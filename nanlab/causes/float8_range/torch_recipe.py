"""float8 range in PyTorch: a hand-written float8 linear layer on raw counts, its input cast to e5m2 without a
scale; the per-tensor scaling fix and the saturating cast that only hides it."""
import torch
from torch import nn

from nanlab.causes.float8_range import (BATCH_SIZE, E4M3_MAX, E5M2_MAX, HIDDEN_UNITS, LR, NUM_CLASSES,
                                        NUM_FEATURES, make_data)
from nanlab.frameworks.torch.loop import Training, accuracy, minibatches

FORMAT_MAX = {torch.float8_e4m3fn: E4M3_MAX, torch.float8_e5m2: E5M2_MAX}


def to_float8(x: torch.Tensor, dtype: torch.dtype, scaled: bool) -> torch.Tensor:
    """``x`` through ``dtype`` and back to float32 (the values a float8 matmul would read). ``scaled``: multiply by
    ``fp8_max / amax`` before the cast and divide after it (per-tensor dynamic scaling)."""
    if not scaled:
        return x.to(dtype).float()
    scale = FORMAT_MAX[dtype] / x.detach().abs().max().clamp(min=1e-12)
    return (x * scale).to(dtype).float() / scale


class Float8Linear(nn.Linear):
    """A linear layer computed from float8 values: the input cast to ``input_dtype``, the weight to e4m3fn, the
    product in float32 (how float8 is emulated on a CPU; a float8 GPU kernel reads the same values)."""

    def __init__(self, in_features: int, out_features: int, input_dtype: torch.dtype, scaled: bool = False,
                 saturate: bool = False):
        super().__init__(in_features, out_features)
        self.input_dtype, self.scaled, self.saturate = input_dtype, scaled, saturate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.saturate:
            x = x.clamp(-FORMAT_MAX[self.input_dtype], FORMAT_MAX[self.input_dtype])
        x8 = to_float8(x, self.input_dtype, self.scaled)  # e5m2, unscaled: inf past 57344
        w8 = to_float8(self.weight, torch.float8_e4m3fn, self.scaled)
        return nn.functional.linear(x8, w8, self.bias)


def make_layers(first: nn.Module) -> nn.Sequential:
    return nn.Sequential(first, nn.LayerNorm(HIDDEN_UNITS), nn.ReLU(), nn.Linear(HIDDEN_UNITS, NUM_CLASSES))


def build_training(seed: int, device: str, first: nn.Module) -> Training:
    data = make_data(seed)
    model = make_layers(first).to(device)
    return Training(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=LR),
        loss_fn=nn.functional.cross_entropy,
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed, device),
        evaluate=accuracy(data.x_eval, data.y_eval, device),
    )


def float32_baseline(seed: int, device: str) -> Training:
    """The same model with a plain float32 first layer: it learns."""
    return build_training(seed, device, nn.Linear(NUM_FEATURES, HIDDEN_UNITS))


def broken(seed: int, device: str) -> Training:
    return build_training(seed, device, Float8Linear(NUM_FEATURES, HIDDEN_UNITS, torch.float8_e5m2))


def per_tensor_scaling(seed: int, device: str) -> Training:
    return build_training(seed, device, Float8Linear(NUM_FEATURES, HIDDEN_UNITS, torch.float8_e4m3fn, scaled=True))


def saturate(seed: int, device: str) -> Training:
    return build_training(seed, device, Float8Linear(NUM_FEATURES, HIDDEN_UNITS, torch.float8_e4m3fn,
                                                     saturate=True))


SETTINGS = {"broken": broken, "per-tensor-scaling": per_tensor_scaling, "saturate": saturate}
