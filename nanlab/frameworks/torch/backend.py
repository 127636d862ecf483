"""PyTorch's seeding, devices and version, behind the same names every framework backend has."""
from __future__ import annotations

import contextlib

import torch


def seed(value: int) -> None:
    torch.manual_seed(value)  # seeds every CUDA device too


def has_gpu() -> bool:
    return torch.cuda.is_available()


def on_device(device: str) -> contextlib.AbstractContextManager:
    """PyTorch places tensors explicitly, so there is no device scope to enter."""
    return contextlib.nullcontext()


def version() -> str:
    return f"torch {torch.__version__}"


def capabilities(device: str) -> dict[str, bool]:
    """What ``device`` (``cpu`` or ``cuda``) can run: float16 and bfloat16 autocast."""
    if device == "cuda":
        return {"float16": True, "bfloat16": torch.cuda.is_bf16_supported()}
    return {"float16": True, "bfloat16": True}  # CPU autocast supports both (slowly), which is what the demos use


def build_info() -> dict[str, str | None]:
    """The CUDA and cuDNN versions this torch was built with (None in a CPU-only build)."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"cuda": torch.version.cuda, "cudnn": str(cudnn) if cudnn else None}


def weights(model) -> list:
    """The model's parameters as NumPy arrays (copies): what a test or a notebook compares before and after."""
    return [p.detach().cpu().numpy().copy() for p in model.parameters()]


def is_batch_stream(value) -> bool:
    """A ``DataLoader`` (or any ``torch.utils.data`` iterable of batches): ``nanlab.scan`` reads it batch by
    batch."""
    return isinstance(value, (torch.utils.data.DataLoader, torch.utils.data.IterableDataset))


def stream_length(stream) -> int | None:
    """How many batches ``stream`` yields, when it knows (an iterable dataset may not)."""
    try:
        return len(stream)
    except TypeError:
        return None
