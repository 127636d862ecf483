"""Every relative link in every notebook opens: in JupyterLab as `make lab` serves the notebooks, and in the static
site `make site` builds. And the glossary is linked where a notebook first uses one of its terms.

Links are read the way a reader meets them: the markdown cells and the markdown and HTML outputs (00-start-here's
triage map is an output), rendered to HTML by nbconvert's markdown renderer. A link resolves in JupyterLab when its
target lies inside the folder JupyterLab serves (read from `make -n lab` through jupyter_server's own command-line
parsing) and exists. A ``#fragment`` into another notebook must be ``#cell-id=ID``, the id of the target's heading
cell: JupyterLab 4 opens a notebook linked as ``other.ipynb#Heading-text`` at its top (it looks for the heading
before the cells have rendered), and scrolls to ``#cell-id=ID`` (tests/test_browser.py clicks one); nbconvert gives
each cell of the site the same ``id="cell-id=ID"``. A fragment within a page may name a heading (its id is the
heading's text with spaces turned into dashes). In the site the same links must point at built pages and ids in them.
"""
import contextlib
import functools
import html.parser
import pathlib
import posixpath
import re
import shlex
import subprocess
import urllib.parse

import nbformat
import pytest
from nbconvert.filters.markdown_mistune import markdown2html_mistune

from tools import build_site

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(path for path in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in path.parts)
GLOSSARY = ROOT / "notebooks" / "glossary.ipynb"
# The terms the issue named (used before they were defined) and the ones a lab meets first, each linked to the
# glossary at its first use in these notebooks (markdown cells, outside code, math and headings).
FIRST_USE = {
    "00-start-here": [("NaN/Inf", "NaN-and-inf")],
    "pytorch/01-high-learning-rate": [("host synchronisation", "Host-synchronisation")],
    "tensorflow/01-high-learning-rate": [("host synchronisation", "Host-synchronisation")],
    "pytorch/02-log-of-zero": [("denormal", "Denormal")],
    "tensorflow/02-log-of-zero": [("denormals", "Denormal")],
    "tensorflow/04-huge-labels": [("XLA", "XLA")],
    "tensorflow/05-symmetric-labels": [("XLA", "XLA")],
    "pytorch/06-exploding-rnn-gradients": [("spectral radius", "Spectral-radius")],
    "tensorflow/06-exploding-rnn-gradients": [("spectral radius", "Spectral-radius")],
    "pytorch/10-softmax-overflow": [("denormals", "Denormal")],
    "tensorflow/10-softmax-overflow": [("denormals", "Denormal")],
    "pytorch/14-fp16-overflow": [("mixed precision", "Mixed-precision"), ("loss scale", "Loss-scale")],
    "tensorflow/14-fp16-overflow": [("mixed precision", "Mixed-precision"), ("loss scale", "Loss-scale")],
}
GLOSSARY_ENTRIES = ["NaN-and-inf", "Overflow", "Underflow", "Denormal", "Machine-epsilon", "float16-and-bfloat16",
                    "Mixed-precision", "Autocast", "Loss-scale", "Logit", "Softmax-and-logsumexp", "Gradient-norm",
                    "Gradient-clipping", "Exploding-and-vanishing-gradients", "Spectral-radius",
                    "Learning-rate-warmup", "Host-synchronisation", "XLA"]


class _Page(html.parser.HTMLParser):
    """The links (a href, img src) of an HTML fragment, and the ids and texts of its headings."""

    def __init__(self):
        super().__init__()
        self.links, self.ids, self.headings, self._heading, self._pilcrow = [], set(), [], None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and "anchor-link" in (attrs.get("class") or "").split():
            self._pilcrow = True  # nbconvert's ¶ after each heading, a link to the heading itself
        elif tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "img" and attrs.get("src"):
            self.links.append(attrs["src"])
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if re.fullmatch(r"h[1-6]", tag):
            self._heading = []

    def handle_data(self, data):
        if self._heading is not None and not self._pilcrow:
            self._heading.append(data)

    def handle_endtag(self, tag):
        if tag == "a":
            self._pilcrow = False
        if re.fullmatch(r"h[1-6]", tag) and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def rendered(notebook: pathlib.Path) -> list[str]:
    """What a reader sees of a notebook as HTML: its markdown cells and its markdown and HTML outputs."""
    parts = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type == "markdown":
            parts.append(markdown2html_mistune(cell.source))
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "text/markdown" in data:
                parts.append(markdown2html_mistune(data["text/markdown"]))
            if "text/html" in data:
                parts.append(data["text/html"])
    return parts


def relative_links(notebook: pathlib.Path) -> list[str]:
    return [link for part in rendered(notebook) for link in _parse(part).links
            if not urllib.parse.urlparse(link).scheme and not link.startswith("//")]


@functools.cache
def lab_anchors(notebook: pathlib.Path) -> set[str]:
    """The ids JupyterLab gives the headings of a notebook: the heading's text, spaces turned into dashes."""
    return {heading.replace(" ", "-") for part in rendered(notebook) for heading in _parse(part).headings}


@functools.cache
def heading_cells(notebook: pathlib.Path) -> dict[str, str]:
    """``cell-id=ID`` fragments of a notebook's cells that open with a heading, each with that heading's id."""
    found = {}
    for cell in nbformat.read(notebook, as_version=4).cells:
        headings = _parse(markdown2html_mistune(cell.source)).headings if cell.cell_type == "markdown" else []
        if headings:
            found[f"cell-id={cell.id}"] = headings[0].replace(" ", "-")
    return found


def _make_dry_run(target: str) -> list[str]:
    """The command lines `make -n TARGET` would run, without building the environment first."""
    lines = subprocess.run(["make", "-n", "-o", ".venv/.installed", target], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    return [line for line in lines if line.strip()]


@functools.cache
def lab_root() -> pathlib.Path:
    """The folder JupyterLab serves under `make lab`, as jupyter_server itself reads `make lab`'s arguments."""
    from jupyter_server.serverapp import ServerApp

    command = next(shlex.split(line) for line in _make_dry_run("lab") if " lab " in f" {line} ")
    arguments = command[command.index("lab") + 1:]
    app = ServerApp()
    with contextlib.chdir(ROOT):  # make runs it from the repository's root
        app.parse_command_line(arguments)
    return pathlib.Path(app.root_dir).resolve()


def site_notebooks() -> list[pathlib.Path]:
    """The notebooks `make site` builds, from its command line."""
    command = next(shlex.split(line) for line in _make_dry_run("site") if "tools.build_site" in line)
    return [ROOT / argument for argument in command if argument.endswith(".ipynb")]


def served_target(root: pathlib.Path, page: pathlib.Path, path: str) -> pathlib.Path | None:
    """Where a link's ``path`` from ``page`` leads in a server whose root is ``root`` (JupyterLab's, the site's),
    or None when it climbs above the root. Resolved in the server's namespace, not the file system's:
    ``../notebooks/pytorch/01-….ipynb`` from notebooks/00-start-here.ipynb names notebooks/pytorch/ on disk, but
    above the root of a server of notebooks/ ("Could not find path")."""
    if not path:
        return page
    joined = posixpath.normpath(posixpath.join(page.parent.relative_to(root).as_posix(), urllib.parse.unquote(path)))
    return None if joined == ".." or joined.startswith("../") else root / joined


def test_make_lab_serves_the_notebooks_folder():
    assert lab_root() == ROOT / "notebooks", "the links below are checked against the folder make lab serves"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: str(path.relative_to(ROOT / "notebooks")))
def test_every_relative_link_opens_in_jupyterlab(notebook):
    root = lab_root()
    broken = []
    for link in relative_links(notebook):
        parsed = urllib.parse.urlparse(link)
        target = served_target(root, notebook, parsed.path)
        if target is None:
            broken.append(f"{link}: outside the folder JupyterLab serves ({root.relative_to(ROOT)}/)")
        elif not target.exists():
            broken.append(f"{link}: no such file")
        elif parsed.fragment and target.suffix == ".ipynb" and target == notebook:
            if urllib.parse.unquote(parsed.fragment) not in lab_anchors(target):
                broken.append(f"{link}: no heading #{parsed.fragment} in {target.name}")
        elif parsed.fragment and target.suffix == ".ipynb":
            fragment = urllib.parse.unquote(parsed.fragment)
            heading = heading_cells(target).get(fragment)
            if heading is None and fragment in lab_anchors(target):
                broken.append(f"{link}: JupyterLab opens {target.name} at its top, not at #{fragment}: link "
                              f"#cell-id={fragment} and give the heading's cell that id")
            elif heading is None:
                broken.append(f"{link}: no heading cell #{fragment} in {target.name}")
            elif fragment != f"cell-id={heading}":  # the source of a link says where it goes, not a random id
                broken.append(f"{link}: give that cell the readable id {heading!r}")
    assert not broken, broken


def test_the_glossary_defines_every_term_and_each_is_linked_at_its_first_use():
    anchors = heading_cells(GLOSSARY)
    assert not [entry for entry in GLOSSARY_ENTRIES if anchors.get(f"cell-id={entry}") != entry]
    protected = re.compile(r"`[^`]*`|\$\$.*?\$\$|\$[^$]*\$|\]\([^)]*\)|<[^>]+>|^#[^\n]*", re.S | re.M)
    unlinked = []
    for name, terms in FIRST_USE.items():
        cells = [cell.source for cell in nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4).cells
                 if cell.cell_type == "markdown"]
        text = protected.sub(lambda match: " " * len(match.group(0)) if not match.group(0).startswith("]")
                             else match.group(0), "\n\n".join(cells))
        for term, anchor in terms:
            first = re.search(rf"(?<![\w/-]){re.escape(term)}(?![\w/-])", text, re.I)
            link = f"]({'' if name.count('/') == 0 else '../'}glossary.ipynb#cell-id={anchor})"
            if first is None or not text.startswith(f"[{first.group(0)}{link}", first.start() - 1):
                unlinked.append(f"{name}: {term!r} is not linked to the glossary (#{anchor}) at its first use")
    assert not unlinked, unlinked


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The static site of every notebook `make site` builds."""
    out = tmp_path_factory.mktemp("site")
    build_site.build(site_notebooks(), out)
    return out


@pytest.mark.slow
def test_make_site_builds_every_notebook_and_every_relative_link_opens_in_it(site):
    assert sorted(site_notebooks()) == NOTEBOOKS, "make site builds every notebook (the glossary too)"
    broken, checked = [], 0
    pages = sorted(site.rglob("*.html"))
    ids = {page: _parse(page.read_text(encoding="utf-8")).ids for page in pages}
    for page in pages:
        if "mathjax" in page.relative_to(site).parts:
            continue
        for link in _parse(page.read_text(encoding="utf-8")).links:
            parsed = urllib.parse.urlparse(link)
            if parsed.scheme or link.startswith("//") or link.startswith("data:"):
                continue
            checked += 1
            target = served_target(site, page, parsed.path)
            if target is None or not target.is_file():
                broken.append(f"{page.relative_to(site)}: {link}: no such page in the site")
            elif (parsed.fragment and target.suffix == ".html"
                  and urllib.parse.unquote(parsed.fragment) not in ids.get(target, set())):
                broken.append(f"{page.relative_to(site)}: {link}: no #{parsed.fragment} in {target.name}")
    assert checked > 2 * len(NOTEBOOKS), "the triage map and the glossary links were checked"
    assert not broken, broken
