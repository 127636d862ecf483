"""Build reveal.js slide decks from notebooks, viewable offline.

Usage: python -m tools.build_slides --out build/slides NOTEBOOK [...]

Each notebook becomes ``<out>/<folder>-<name>.slides.html`` (folder = pytorch, tensorflow, or notebooks for
00-start-here). A notebook without slide metadata gets defaults from its headings, in memory only
(tools/slide_metadata.py). reveal.js and MathJax are copied next to the decks (tools/offline_assets.py), and the
decks use nbconvert's reveal template with the CDN scripts replaced by those local copies, so that a deck opens
from the file system with no network. Open one in a browser; press S for the speaker notes.
"""
from __future__ import annotations

import argparse
import pathlib

import nbformat
from nbconvert import SlidesExporter

from tools.offline_assets import REVEAL_FOLDER, copy_mathjax, copy_reveal, mathjax_url
from tools.slide_metadata import add_slide_metadata

TEMPLATES = pathlib.Path(__file__).resolve().parent / "templates"


def deck_name(path: pathlib.Path) -> str:
    return f"{path.parent.name}-{path.stem}.slides.html"


def build_deck(path: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    notebook = nbformat.read(path, as_version=4)
    add_slide_metadata(notebook)
    exporter = SlidesExporter(template_name="nanlab_reveal", extra_template_basedirs=[str(TEMPLATES)],
                              reveal_url_prefix=REVEAL_FOLDER, reveal_theme="white", mathjax_url=mathjax_url(""),
                              reveal_scroll=True)
    html, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": path.stem}})
    target = out / deck_name(path)
    target.write_text(html, encoding="utf-8")
    return target


def build(notebooks: list[pathlib.Path], out: pathlib.Path) -> list[pathlib.Path]:
    out.mkdir(parents=True, exist_ok=True)
    copy_reveal(out)
    copy_mathjax(out)
    return [build_deck(path, out) for path in notebooks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("build/slides"))
    parser.add_argument("notebooks", nargs="+", type=pathlib.Path)
    args = parser.parse_args()
    for deck in build(args.notebooks, args.out):
        print(deck)


if __name__ == "__main__":
    main()
