"""Device resolution: ``auto`` means the GPU when the framework sees one, else the CPU."""
from __future__ import annotations

from nanlab.errors import NanlabError
from nanlab.registry import check_framework

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str, framework: str) -> str:
    """Return ``"cpu"`` or ``"cuda"`` for ``framework``; a GPU asked for but absent is a clear error."""
    framework = check_framework(framework)
    name = str(device).lower()
    if name == "gpu":
        name = "cuda"
    if name not in DEVICES:
        raise NanlabError(f"unknown device {device!r}; valid devices: {', '.join(DEVICES)}")
    if name == "cpu":
        return "cpu"
    has_gpu = _torch_has_gpu() if framework == "torch" else _tensorflow_has_gpu()
    if name == "cuda" and not has_gpu:
        raise NanlabError(
            f"device 'cuda' was asked for but {framework} sees no GPU on this machine; valid here: auto, cpu"
        )
    return "cuda" if has_gpu else "cpu"


def _torch_has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _tensorflow_has_gpu() -> bool:
    from nanlab.keras_loop import tf

    return bool(tf.config.list_physical_devices("GPU"))
