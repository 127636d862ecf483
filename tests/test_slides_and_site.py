"""`make slides` and `make site` build offline: every script and link a page uses resolves to a local file."""
import html.parser
import pathlib
import urllib.parse

from tools import build_site, build_slides
from tools.slide_metadata import add_slide_metadata, slide_type

ROOT = pathlib.Path(__file__).resolve().parents[1]

START = ROOT / "notebooks" / "00-start-here.ipynb"
ONE_PER_FRAMEWORK = [ROOT / "notebooks" / "pytorch" / "01-high-learning-rate.ipynb",
                     ROOT / "notebooks" / "tensorflow" / "01-high-learning-rate.ipynb"]


class _References(html.parser.HTMLParser):
    """Every src of a script/img and every href of a link/a in a page."""

    def __init__(self):
        super().__init__()
        self.scripts, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "img", "link") and (attrs.get("src") or attrs.get("href")):
            self.scripts.append(attrs.get("src") or attrs.get("href"))
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])


def references(page: pathlib.Path) -> _References:
    parser = _References()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def resolves(page: pathlib.Path, url: str) -> bool:
    path = urllib.parse.urlparse(url).path
    return (page.parent / urllib.parse.unquote(path)).resolve().exists()


def test_a_deck_builds_and_loads_only_local_scripts(tmp_path):
    deck, = build_slides.build([START], tmp_path)
    page = references(deck)
    assert deck.read_text().count("<section") >= 3, "several slides"
    assert any(src.endswith("reveal.js/dist/reveal.js") for src in page.scripts)
    external = [src for src in page.scripts if not src.startswith("data:") and "://" in src]
    assert not external, f"a deck must open offline: {external}"
    assert all(resolves(deck, src) for src in page.scripts if not src.startswith("data:"))


def test_slide_defaults_come_from_headings_and_skip_the_parameters_cell():
    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_code_cell("SEED = 0"),
        nbformat.v4.new_markdown_cell("### Detail"), nbformat.v4.new_markdown_cell("prose")])
    notebook.cells[1].metadata["tags"] = ["parameters"]
    assert add_slide_metadata(notebook)
    assert [cell.metadata["slideshow"]["slide_type"] for cell in notebook.cells] == ["slide", "skip", "subslide", "-"]
    notebook.cells[3].metadata["slideshow"] = {"slide_type": "fragment"}
    assert not add_slide_metadata(notebook), "an author's own slide metadata is kept"
    assert slide_type(nbformat.v4.new_markdown_cell("## Why")) == "slide"


def test_the_site_index_links_every_built_notebook_and_every_link_resolves(tmp_path):
    index = build_site.build([START, *ONE_PER_FRAMEWORK], tmp_path)
    links = references(index).links
    assert sorted(links) == sorted(["notebooks/00-start-here.html", "notebooks/pytorch/01-high-learning-rate.html",
                                    "notebooks/tensorflow/01-high-learning-rate.html"])
    assert all(resolves(index, link) for link in links)
    assert "PyTorch" in index.read_text() and "TensorFlow" in index.read_text()
    for page in (tmp_path / "notebooks").rglob("*.html"):
        found = references(page)
        assert not [src for src in found.scripts if "://" in src], f"{page.name} loads a script from the network"
        assert all(resolves(page, src) for src in found.scripts if not src.startswith("data:"))
        assert not [link for link in found.links if link.endswith(".ipynb")], "links point at pages"
    start_links = references(tmp_path / "notebooks" / "00-start-here.html").links
    assert "pytorch/01-high-learning-rate.html" in " ".join(start_links)
    assert resolves(tmp_path / "notebooks" / "00-start-here.html",
                    next(link for link in start_links if link.endswith("pytorch/01-high-learning-rate.html")))
