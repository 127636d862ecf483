"""Seed every random number generator a run touches, in one call."""
from __future__ import annotations

import random

from nanlab.errors import NanlabError
from nanlab.frameworks import Framework, get_framework

MAX_SEED = 2**32 - 1  # NumPy's legacy generator takes seeds in 0..2**32-1


def check_seed(seed) -> int:
    """A seed as an int in ``0..2**32-1``, or a one-line error saying what is valid."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise NanlabError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    return seed


def seed_everything(seed: int, framework: str | Framework | None = None) -> None:
    """Seed Python, NumPy and the framework's own generators; ``None`` seeds only Python and NumPy."""
    import numpy as np  # here, not at the top: `import nanlab` stays fast

    check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    if framework is not None:
        get_framework(framework).backend.seed(seed)
