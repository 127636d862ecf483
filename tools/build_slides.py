"""Build reveal.js slide decks from notebooks, for a projector, viewable offline.

Usage: python -m tools.build_slides [--show-code] --out build/slides NOTEBOOK [...]

Each notebook becomes ``<out>/<folder>-<name>.slides.html`` (folder = pytorch, tensorflow, or notebooks for
00-start-here and the glossary). What a room needs to read from the back, at 1280x720 and larger:

- code is hidden by default: a slide shows the prose, the printed results and the figures (``--show-code``, or
  ``make slides SHOW_CODE=1``, puts each cell's code back above its output); an error shows its last line only;
- every figure gets a slide of its own, sized to the screen (the output before it stays on the slide before);
- long output wraps at spaces (a token longer than a line breaks where it must), so nothing runs off the right
  edge; a slide that would hold more than about a screen of text continues on the next (vertical) slide, and one
  that is still too tall scrolls;
- fonts: prose 24 px, code, output and tables 21 px, at 1280x720 (reveal.js scales the whole slide with
  the window).

A notebook without slide metadata gets defaults from its headings, in memory only (tools/slide_metadata.py).
reveal.js and MathJax are copied next to the decks (tools/offline_assets.py), and the decks use nbconvert's reveal
template with the CDN scripts replaced by those local copies (tools/templates/nanlab_reveal), so that a deck opens
from the file system with no network. Open one in a browser; press S for the speaker notes, F for full screen.
"""
from __future__ import annotations

import argparse
import copy
import math
import pathlib
import re

import nbformat
from nbconvert import SlidesExporter

from tools.offline_assets import REVEAL_FOLDER, copy_mathjax, copy_reveal, mathjax_url
from tools.slide_metadata import add_slide_metadata

TEMPLATES = pathlib.Path(__file__).resolve().parent / "templates"
WIDTH, HEIGHT = 1280, 720  # the slide's own size; reveal.js scales it to the window
LINE_BUDGET = 16  # lines of prose or output that fit on one slide under its heading at these font sizes
PROSE_CHARS = 90  # characters per line of 24 px prose across the slide
CODE_CHARS = 95  # characters per line of 21 px monospace
TABLE_CHARS = 100  # characters of a table row per (24 px) slide line, its columns wrapped side by side: a line of
#                    21 px text holds ~115 across the slide, less what ragged columns waste
ANSI = re.compile(r"\x1b\[[0-9;]*m")
MARKUP = re.compile(r"\]\([^)]*\)|[*`\[]")  # a link's target and emphasis, which take no room on the slide
TABLE_RULE = re.compile(r"\s*\|?[\s:|-]*-[\s:|-]*\|?\s*")


def deck_name(path: pathlib.Path) -> str:
    return f"{path.parent.name}-{path.stem}.slides.html"


def is_figure(output) -> bool:
    return any(kind.startswith("image/") for kind in output.get("data", {}))


def _wrapped(text: str, width: int) -> int:
    return sum(max(1, math.ceil(len(line) / width)) for line in text.splitlines())


def markdown_lines(source: str) -> float:
    """About how many slide lines a piece of markdown takes (headings and table rows count extra)."""
    lines, in_code = 0.0, False
    for line in source.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            lines += _wrapped(line, CODE_CHARS)
        elif line.lstrip().startswith("#"):
            lines += 2
        elif line.lstrip().startswith("|"):
            if not TABLE_RULE.fullmatch(line):  # a row, not the |---| rule
                lines += 0.5 + math.ceil(len(MARKUP.sub("", line)) / TABLE_CHARS)
        elif line.strip():
            lines += _wrapped(line, PROSE_CHARS)
        else:
            lines += 0.5
    return lines


def output_lines(output) -> float:
    if output.output_type == "stream":
        return _wrapped(output.text, CODE_CHARS)
    if output.output_type == "error":
        return _wrapped("\n".join(ANSI.sub("", line) for line in output.traceback), CODE_CHARS)
    data = output.get("data", {})
    if "text/markdown" in data:
        return markdown_lines(data["text/markdown"])
    if "text/html" in data:
        return 4 + data["text/html"].count("<tr")
    return _wrapped(data.get("text/plain", ""), CODE_CHARS)


def _last_line_of_error(output):
    """An error output reduced to ``Name: message``: the traceback is for the author, not the room."""
    shortened = copy.deepcopy(output)
    shortened.traceback = [f"{output.ename}: {(output.evalue.strip().splitlines() or [''])[0]}"]
    return shortened


def markdown_blocks(source: str) -> list[str]:
    """A markdown text cut at its blank lines (outside fenced code): paragraphs, lists, tables, headings."""
    blocks, current, fenced = [], [], False
    for line in source.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not line.strip() and not fenced:
            if current:
                blocks.append("\n".join(current))
            current = []
        elif line.lstrip().startswith("#") and not fenced and current:
            blocks.append("\n".join(current))  # a heading right under a paragraph still starts a block
            current = [line]
        else:
            current.append(line)
    if current:
        blocks.append("\n".join(current))
    return blocks


def is_table(block: str) -> bool:
    rows = block.strip().splitlines()
    return len(rows) >= 2 and rows[0].lstrip().startswith("|") and bool(TABLE_RULE.fullmatch(rows[1]))


def split_table(block: str) -> list[str]:
    """A markdown table too long for one slide as several tables, each with the header and as many rows as fit."""
    if not is_table(block) or markdown_lines(block) <= LINE_BUDGET:
        return [block]
    header, rule, *rows = block.strip().splitlines()
    chunks, current = [], []
    for row in rows:
        if current and markdown_lines("\n".join([header, rule, *current, row])) > LINE_BUDGET:
            chunks.append(current)
            current = []
        current.append(row)
    chunks.append(current)
    return ["\n".join([header, rule, *chunk]) for chunk in chunks]


def markdown_units(cell) -> list:
    """A markdown cell cut where a slide should turn: before each heading after the first block, and where the
    text so far would not fit one screen (between paragraphs). Each piece after the first that opens with a
    heading, or continues a text too long for one slide, is flagged to start a new (vertical) slide."""
    pieces, lines = [[]], 0.0
    for block in (part for block in markdown_blocks(cell.source) for part in split_table(block)):
        size = markdown_lines(block)
        heading = block.lstrip().startswith("#")
        if pieces[-1] and (heading or lines + size > LINE_BUDGET):
            pieces.append([])
            lines = 0.0
        pieces[-1].append(block)
        lines += size
    units = []
    for index, blocks in enumerate(piece for piece in pieces if piece):
        unit = copy.deepcopy(cell)
        unit.source = "\n\n".join(blocks)
        if index:
            unit.id = f"{cell.get('id', 'cell')}-{index}"
            unit.metadata["nanlab_turn"] = True
        units.append(unit)
    return units


def units(cell, show_code: bool) -> list:
    """The pieces of a cell that go on slides: a markdown cell cut at its headings and where it overflows a screen
    (markdown_units); a code cell split so that each figure is a piece of its own and the outputs between figures
    stay together (the code, when shown, on the first piece)."""
    if cell.cell_type != "code":
        return markdown_units(cell) if cell.source.strip() else []
    outputs, alone = [], []  # alone: a figure, or a piece of a table too long for one slide
    for output in cell.get("outputs", []):
        if output.output_type == "error" and not show_code:
            output = _last_line_of_error(output)
        tables = split_table(output.get("data", {}).get("text/markdown", ""))
        for table in tables if len(tables) > 1 else [None]:
            piece = output
            if table is not None:
                piece = copy.deepcopy(output)
                piece.data = {"text/markdown": table}
            outputs.append(piece)
            alone.append(is_figure(piece) or table is not None)
    groups: list[list] = []
    for index, output in enumerate(outputs):
        if alone[index] or not groups or alone[index - 1]:
            groups.append([output])
        else:
            groups[-1].append(output)
    pieces = []
    for index, group in enumerate(groups or [[]]):
        piece = copy.deepcopy(cell)
        piece.outputs = group
        if index:
            piece.id = f"{cell.get('id', 'cell')}-{index}"
        if index or not show_code:
            piece.metadata["transient"] = {"remove_source": True}
        pieces.append(piece)
    return [piece for piece in pieces if show_code and not piece.metadata.get("transient") or piece.outputs]


def unit_lines(unit) -> float:
    if unit.cell_type == "markdown":
        return markdown_lines(unit.source)
    shown = 0 if unit.metadata.get("transient", {}).get("remove_source") else _wrapped(unit.source, CODE_CHARS) + 1
    return shown + sum(output_lines(output) for output in unit.outputs)


def prepare(notebook, show_code: bool = False):
    """A copy of ``notebook`` laid out for a projector (see the module's docstring); the original is untouched."""
    notebook = copy.deepcopy(notebook)
    add_slide_metadata(notebook)
    cells, pending, used, after_figure = [], "slide", 0.0, False
    for cell in notebook.cells:
        kind = cell.metadata.get("slideshow", {}).get("slide_type") or "-"
        if kind == "skip":
            continue
        if kind == "notes":
            cells.append(cell)
            continue
        if kind in ("slide", "subslide"):
            pending = "slide" if "slide" in (pending, kind) else "subslide"
        for unit in units(cell, show_code):
            figure = unit.cell_type == "code" and any(is_figure(output) for output in unit.outputs)
            lines = unit_lines(unit)
            turn = unit.metadata.pop("nanlab_turn", False)
            if pending:
                start = pending
            elif turn or figure or after_figure or (used and used + lines > LINE_BUDGET):
                start = "subslide"  # a figure alone on its slide; a heading or text that would not fit: the next
            else:
                start = kind if kind == "fragment" else "-"
            unit.metadata["slideshow"] = {"slide_type": start}
            if figure:
                unit.metadata["slideshow"]["data"] = {"figure": "1"}  # <section data-figure="1">: sized to fit
            used = lines if start in ("slide", "subslide") else used + lines
            pending, after_figure = None, figure
            cells.append(unit)
    notebook.cells = cells
    return notebook


def build_deck(path: pathlib.Path, out: pathlib.Path, show_code: bool = False) -> pathlib.Path:
    notebook = prepare(nbformat.read(path, as_version=4), show_code)
    exporter = SlidesExporter(template_name="nanlab_reveal", extra_template_basedirs=[str(TEMPLATES)],
                              reveal_url_prefix=REVEAL_FOLDER, reveal_theme="white", mathjax_url=mathjax_url(""),
                              reveal_width=str(WIDTH), reveal_height=str(HEIGHT), reveal_transition="none",
                              reveal_number="c/t", exclude_input=not show_code, exclude_input_prompt=True,
                              exclude_output_prompt=True)
    html, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": path.stem}})
    target = out / deck_name(path)
    target.write_text(html, encoding="utf-8")
    return target


def build(notebooks: list[pathlib.Path], out: pathlib.Path, show_code: bool = False) -> list[pathlib.Path]:
    out.mkdir(parents=True, exist_ok=True)
    copy_reveal(out)
    copy_mathjax(out)
    return [build_deck(path, out, show_code) for path in notebooks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("build/slides"))
    parser.add_argument("--show-code", action="store_true", help="show each code cell above its output")
    parser.add_argument("notebooks", nargs="+", type=pathlib.Path)
    args = parser.parse_args()
    for deck in build(args.notebooks, args.out, args.show_code):
        print(deck)


if __name__ == "__main__":
    main()
