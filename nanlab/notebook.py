"""Helpers for the notebooks: show a recipe's source next to the call that runs it, and a version banner."""
from __future__ import annotations

import inspect
import platform
import sys
from typing import Callable

from nanlab.frameworks import Framework, get_framework


def show(*functions: Callable) -> None:
    """Display the source of recipe functions as highlighted code, so the notebook shows the code that runs."""
    from IPython.display import Markdown, display

    blocks = [f"```python\n{inspect.getsource(function).rstrip()}\n```" for function in functions]
    display(Markdown("\n\n".join(blocks)))


def banner(framework: str | Framework, device: str) -> str:
    """One line: Python, the framework's version and the device runs will use."""
    version = get_framework(framework).backend.version()
    return f"Python {platform.python_version()} | {version} | device: {device} | {sys.platform}"
