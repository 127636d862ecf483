"""Helpers for the notebooks: show a recipe's source next to the call that runs it, a version banner, and links
from one notebook to another."""
from __future__ import annotations

import inspect
import platform
import posixpath
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


def notebook_link(path: str, start: str = "notebooks") -> str:
    """A link to the notebook at ``path`` (relative to the repository root, as ``Cause.notebooks`` gives it) from a
    notebook in the folder ``start``: ``pytorch/01-high-learning-rate.ipynb`` from 00-start-here, which lives in
    notebooks/. Relative to the notebook, never to the repository, so that it opens wherever the notebooks folder
    is served: JupyterLab under `make lab` (its root is notebooks/), the static site and a student copy."""
    return posixpath.relpath(path, start)


def table_cell(text: str) -> str:
    """``text`` made safe for a cell of a markdown table: a ``|`` in it (``max |x|``) would end the cell."""
    return text.replace("|", "\\|")


def triage_map(causes=None, start: str = "notebooks") -> str:
    """00-start-here's triage map, a markdown table with one row per cause: its title and id, when the NaN appears,
    what it looks like, and a link to its notebook in each framework, relative to the folder ``start``
    (``notebook_link``)."""
    from nanlab.registry import list_causes

    rows = ["| cause | when the NaN appears | what it looks like | notebooks |", "|---|---|---|---|"]
    for cause in list_causes() if causes is None else causes:
        links = " · ".join(f"[{framework}]({notebook_link(path, start)})"
                           for framework, path in cause.notebooks.items())
        rows.append(f"| **{table_cell(cause.title)}** (`{cause.id}`) | {table_cell(cause.when)} | "
                    f"{table_cell(cause.symptom)} | {links} |")
    return "\n".join(rows)
