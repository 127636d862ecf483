"""Build a static site of the executed notebooks: one HTML page each and an index grouping the causes by
framework. It reads offline: images are embedded, CSS is inline, MathJax is a local copy, no script comes from a
CDN (tools/templates/nanlab_site), and links between notebooks point at their pages.

Usage: python -m tools.build_site --out build/site [NOTEBOOK ...]   (default: every notebook under notebooks/)

Pages keep the repository's layout (``<out>/notebooks/pytorch/01-….html``), so the notebooks' relative links
keep working. The index lists, per framework, each cause of the catalogue (number, title, what it looks like)
whose notebook was built, then that framework's other notebooks. The notebooks are not executed: the site shows
the outputs they were committed with (``make notebooks`` refreshes them).
"""
from __future__ import annotations

import argparse
import html
import pathlib
import re

import nbformat
from nbconvert import HTMLExporter

from tools.offline_assets import copy_mathjax, mathjax_url

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEMPLATES = pathlib.Path(__file__).resolve().parent / "templates"
NOTEBOOK_LINK = re.compile(r'href="(?!https?:)([^"#]*?)\.ipynb(#[^"]*)?"')


def page_path(notebook: pathlib.Path) -> pathlib.Path:
    """The page of a notebook, relative to the site's root."""
    return notebook.resolve().relative_to(ROOT).with_suffix(".html")


def build_page(notebook: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    relative = page_path(notebook)
    to_root = "../" * (len(relative.parts) - 1)
    exporter = HTMLExporter(template_name="nanlab_site", extra_template_basedirs=[str(TEMPLATES)],
                            mathjax_url=mathjax_url(to_root))
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4),
                                          resources={"metadata": {"name": notebook.stem}})
    body = NOTEBOOK_LINK.sub(lambda match: f'href="{match.group(1)}.html{match.group(2) or ""}"', body)
    target = out / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(body, encoding="utf-8")
    return target


def _title(notebook: pathlib.Path) -> str:
    first = next((cell.source for cell in nbformat.read(notebook, as_version=4).cells
                  if cell.cell_type == "markdown"), notebook.stem)
    return first.splitlines()[0].lstrip("# ").strip() or notebook.stem


def index_html(built: list[pathlib.Path]) -> str:
    """The index page: start-here first, then per framework its causes in catalogue order and its other
    notebooks; only built notebooks are linked."""
    from nanlab import list_causes
    from nanlab.frameworks import list_frameworks

    pages = {notebook.resolve().relative_to(ROOT).as_posix(): page_path(notebook).as_posix() for notebook in built}
    parts = ["<h1>nanlab: why is my loss NaN?</h1>",
             "<p>Every notebook, executed on CPU, one page each. Each cause has one notebook per framework: the "
             "symptom, why it happens, how to diagnose it, fixes that stay finite and learn, the fix that only "
             "hides it, exercises.</p>"]
    others = sorted(path for path in pages if path.count("/") == 1)
    if others:
        parts.append("<ul>" + "".join(f'<li><a href="{pages[path]}">{html.escape(_title(ROOT / path))}</a></li>'
                                      for path in others) + "</ul>")
    for framework in list_frameworks():
        rows, listed = [], set()
        for cause in list_causes():
            path = cause.notebooks.get(framework.name)
            if path in pages:
                listed.add(path)
                rows.append(f'<tr><td>{cause.number:02d}</td><td><a href="{pages[path]}">{html.escape(cause.title)}'
                            f'</a></td><td>{html.escape(cause.when)}</td><td>{html.escape(cause.symptom)}</td></tr>')
        folder = f"notebooks/{framework.notebook_folder}/"
        extra = sorted(path for path in pages if path.startswith(folder) and path not in listed)
        if not rows and not extra:
            continue
        parts.append(f"<h2>{html.escape(framework.title)}</h2>")
        if rows:
            parts.append("<table><tr><th>#</th><th>cause</th><th>when the NaN appears</th>"
                         "<th>what it looks like</th></tr>" + "".join(rows) + "</table>")
        if extra:
            parts.append("<ul>" + "".join(f'<li><a href="{pages[path]}">{html.escape(_title(ROOT / path))}</a></li>'
                                          for path in extra) + "</ul>")
    style = ("body{font-family:sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
             "table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:.3rem .5rem;"
             "text-align:left;vertical-align:top}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>nanlab notebooks</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def build(notebooks: list[pathlib.Path], out: pathlib.Path) -> pathlib.Path:
    out.mkdir(parents=True, exist_ok=True)
    copy_mathjax(out)
    built = [notebook for notebook in notebooks if build_page(notebook, out)]
    index = out / "index.html"
    index.write_text(index_html(built), encoding="utf-8")
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "build" / "site")
    parser.add_argument("notebooks", nargs="*", type=pathlib.Path)
    args = parser.parse_args()
    notebooks = args.notebooks or sorted((ROOT / "notebooks").rglob("*.ipynb"))
    print(build([notebook for notebook in notebooks if ".ipynb_checkpoints" not in notebook.parts], args.out))


if __name__ == "__main__":
    main()
