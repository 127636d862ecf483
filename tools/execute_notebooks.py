"""Execute notebooks in place, the way they are committed: top to bottom, on CPU, outputs kept.

Usage: python -m tools.execute_notebooks notebooks/pytorch/01-high-learning-rate.ipynb [...]

Each notebook runs with its own folder as the working directory and is saved with the ``python3`` kernelspec, so
that JupyterLab opens it without asking for a kernel. Afterwards the ``<Figure size …>`` text that matplotlib's
inline backend puts beside every image is dropped (the image is the output; the text is noise that names nothing
a reader needs), and so are the cells' execution timestamps.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import time

import nbformat
from nbclient import NotebookClient

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def execute(path: pathlib.Path, timeout: int = 600) -> float:
    notebook = nbformat.read(path, as_version=4)
    notebook.metadata["kernelspec"] = dict(KERNELSPEC)
    started = time.perf_counter()
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    elapsed = time.perf_counter() - started
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)  # timestamps of an earlier run: noise in every diff
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data and data.get("text/plain", "").startswith("<Figure size"):
                del data["text/plain"]
    nbformat.write(notebook, path)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=pathlib.Path)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # committed outputs come from the CPU
    for path in parser.parse_args().notebooks:
        print(f"{path}: executed in {execute(path):.1f} s")


if __name__ == "__main__":
    main()
