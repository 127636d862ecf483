"""Run a PyTorch setting that trips a CUDA device-side assert in a child process.

A device-side assert leaves the CUDA context unusable for the rest of the process, so the caller (a notebook, a
``verify`` sweep) would lose the GPU. The child trains the setting on ``cuda``; the parent turns its failure into
``DeviceSideAssertError``. UNTESTED: this project's machines have no GPU; the behaviour is per the PyTorch docs.
"""
from __future__ import annotations

import subprocess
import sys

CHILD = """
import sys, importlib, torch
from nanlab.seeding import seed_everything
from nanlab.frameworks.torch.loop import train
recipe = importlib.import_module(sys.argv[1])
seed, steps = int(sys.argv[2]), int(sys.argv[3])
seed_everything(seed, "torch")
train(recipe.broken_training(seed, "cuda"), steps)
torch.cuda.synchronize()
"""


class DeviceSideAssertError(RuntimeError):
    """The CUDA kernel asserted (e.g. an out-of-range target), seen from outside the process it poisoned."""


def raise_device_assert_from_child(recipe_module: str, seed: int, steps: int) -> None:
    """Train ``recipe_module.broken_training`` on CUDA in a child; raise what the device did."""
    child = subprocess.run([sys.executable, "-c", CHILD, recipe_module, str(seed), str(steps)],
                           capture_output=True, text=True)
    tail = child.stderr.strip().splitlines()[-1] if child.stderr.strip() else ""
    if "device-side assert" in child.stderr:
        raise DeviceSideAssertError(f"CUDA device-side assert in a child process: {tail}")
    raise RuntimeError(f"expected a CUDA device-side assert; the child exited {child.returncode}: {tail}")
