"""Device resolution: ``auto`` means the GPU when the framework sees one, else the CPU."""
from __future__ import annotations

from nanlab.errors import NanlabError
from nanlab.frameworks import Framework, get_framework

DEVICES = ("auto", "cpu", "cuda")
DEVICE_ALIASES = {"gpu": "cuda"}


def check_device(device: str) -> str:
    """Normalise a device name (``gpu`` → ``cuda``) or say which names are valid."""
    name = str(device).lower()
    name = DEVICE_ALIASES.get(name, name)
    if name not in DEVICES:
        raise NanlabError(f"unknown device {device!r}; valid devices: {', '.join(DEVICES)}")
    return name


def resolve_device(device: str, framework: str | Framework) -> str:
    """Return ``"cpu"`` or ``"cuda"`` for ``framework``; a GPU asked for but absent is a clear error."""
    name = check_device(device)
    framework = get_framework(framework)
    if name == "cpu":
        return "cpu"
    has_gpu = framework.backend.has_gpu()
    if name == "cuda" and not has_gpu:
        raise NanlabError(
            f"device 'cuda' was asked for but {framework.name} sees no GPU on this machine; valid here: auto, cpu"
        )
    return "cuda" if has_gpu else "cpu"
