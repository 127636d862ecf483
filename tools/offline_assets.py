"""Local copies of the JavaScript the slides and the site need, so that they open with no network.

reveal.js comes from the ``sphinx-revealjs`` package (it ships reveal.js 5 in its static files) and MathJax 2 from
``jupyter-server-mathjax``; both are in the ``dev`` extras. Nothing is fetched at build or view time.
"""
from __future__ import annotations

import importlib.resources
import pathlib
import shutil

REVEAL_FOLDER = "reveal.js"
MATHJAX_FOLDER = "mathjax"
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"


def _package_folder(package: str, *parts: str) -> pathlib.Path:
    return pathlib.Path(str(importlib.resources.files(package).joinpath(*parts)))


def copy_reveal(destination: pathlib.Path) -> pathlib.Path:
    """Copy reveal.js (dist/ and plugin/) into ``destination/reveal.js``; return that folder."""
    target = destination / REVEAL_FOLDER
    source = _package_folder("sphinx_revealjs", "_static", "revealjs")
    for part in ("dist", "plugin"):
        shutil.copytree(source / part, target / part, dirs_exist_ok=True)
    return target


def copy_mathjax(destination: pathlib.Path) -> pathlib.Path:
    """Copy MathJax 2 into ``destination/mathjax``; return that folder."""
    target = destination / MATHJAX_FOLDER
    shutil.copytree(_package_folder("jupyter_server_mathjax", "static"), target, dirs_exist_ok=True)
    return target


def mathjax_url(prefix: str) -> str:
    """The MathJax URL for a page whose relative path to the assets' folder is ``prefix`` ("" or "../")."""
    return f"{prefix}{MATHJAX_FOLDER}/MathJax.js?config={MATHJAX_CONFIG}"
