"""Seed every random number generator a run touches, in one call."""
from __future__ import annotations

import random

from nanlab.registry import check_framework


def seed_everything(seed: int, framework: str | None = None) -> None:
    """Seed Python, NumPy and the framework (torch, or TensorFlow/Keras); ``None`` seeds only Python and NumPy."""
    import numpy as np  # here, not at the top: `import nanlab` stays fast

    random.seed(seed)
    np.random.seed(seed)
    if framework is None:
        return
    if check_framework(framework) == "torch":
        import torch

        torch.manual_seed(seed)  # seeds every CUDA device too
    else:
        from nanlab.keras_loop import keras

        keras.utils.set_random_seed(seed)  # Python, NumPy and the TensorFlow backend
