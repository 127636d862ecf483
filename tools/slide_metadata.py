"""Give a notebook reveal.js slide metadata from its headings, when it has none.

Usage: python -m tools.slide_metadata [--check] NOTEBOOK [...]

A notebook whose cells already carry ``slideshow`` metadata is left as it is (its author chose). Otherwise: a
markdown cell opening with a level-1 or level-2 heading starts a new slide, one opening with a level-3 heading a
sub-slide, the ``parameters`` cell is skipped, and every other cell continues the slide it follows ("-").
``--check`` writes nothing and exits 1 when a notebook has no slide metadata. Slides: ``make slides``; live
slides in JupyterLab: the RISE extension (jupyterlab-rise), View → Render as slides.
"""
from __future__ import annotations

import argparse
import pathlib
import re
import sys

import nbformat

HEADING = re.compile(r"^\s*(#{1,6})\s")


def slide_type(cell) -> str:
    """The slide type a cell gets from its own content."""
    if "parameters" in cell.metadata.get("tags", []):
        return "skip"
    heading = HEADING.match(cell.source) if cell.cell_type == "markdown" else None
    if heading:
        return "slide" if len(heading.group(1)) <= 2 else "subslide"
    return "-"


def has_slides(notebook) -> bool:
    return any("slideshow" in cell.metadata for cell in notebook.cells)


def add_slide_metadata(notebook) -> bool:
    """Set slide types from headings unless the notebook has some already; True when it changed the notebook."""
    if has_slides(notebook):
        return False
    for cell in notebook.cells:
        cell.metadata["slideshow"] = {"slide_type": slide_type(cell)}
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report notebooks without slide metadata")
    parser.add_argument("notebooks", nargs="+", type=pathlib.Path)
    args = parser.parse_args()
    missing = []
    for path in args.notebooks:
        notebook = nbformat.read(path, as_version=4)
        if args.check:
            if not has_slides(notebook):
                missing.append(path)
        elif add_slide_metadata(notebook):
            nbformat.write(notebook, path)
            print(f"{path}: slide metadata set from its headings")
    for path in missing:
        print(f"{path}: no slide metadata (run python -m tools.slide_metadata {path})")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
