"""`make slides` and `make site` build offline: every script and link a page uses resolves to a local file. Slides
are laid out for a projector: code hidden unless asked for, one figure per slide, long sections and tables cut
into screens (tests/test_browser.py measures the result in Chromium at 1280x720)."""
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


def _code_cell(outputs, source="x = 1"):
    import nbformat

    cell = nbformat.v4.new_code_cell(source, outputs=outputs)
    cell.execution_count = 1
    return cell


def _figure():
    import nbformat

    return nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo="})


def _text(text):
    import nbformat

    return nbformat.v4.new_output("stream", name="stdout", text=text)


def _types(notebook):
    return [(cell.cell_type, cell.metadata["slideshow"]["slide_type"]) for cell in notebook.cells]


def test_slides_hide_code_and_give_each_figure_a_slide_of_its_own():
    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("## The symptom\nA run goes NaN."),
        _code_cell([_text("step 0 loss 1.39\n"), _figure(), _text("first non-finite step: 7\n"), _figure()]),
        _code_cell([]),  # no output: nothing to show once the code is hidden
        nbformat.v4.new_markdown_cell("What it means."),
    ])
    slides = build_slides.prepare(notebook)
    assert _types(slides) == [("markdown", "slide"), ("code", "-"), ("code", "subslide"), ("code", "subslide"),
                              ("code", "subslide"), ("markdown", "subslide")]
    assert [len(cell.outputs) for cell in slides.cells if cell.cell_type == "code"] == [1, 1, 1, 1]
    figures = [cell for cell in slides.cells if cell.metadata["slideshow"].get("data") == {"figure": "1"}]
    assert len(figures) == 2 and all("image/png" in cell.outputs[0].data for cell in figures)
    assert all(cell.metadata["transient"]["remove_source"] for cell in slides.cells if cell.cell_type == "code")
    assert notebook.cells[1].outputs[1].output_type == "display_data", "the notebook itself is untouched"

    shown = build_slides.prepare(notebook, show_code=True)
    code = [cell for cell in shown.cells if cell.cell_type == "code"]
    assert [bool(cell.metadata.get("transient")) for cell in code] == [False, True, True, True, False], \
        "the code above the first piece of its output, and a cell without output still shows its code"


def test_slides_show_an_error_by_its_last_line_and_cut_long_text_and_tables_into_screens():
    import nbformat

    error = nbformat.v4.new_output("error", ename="IndexError", evalue="Target 8000 is out of bounds.",
                                   traceback=["\x1b[31mTraceback\x1b[0m", "  File ...", "IndexError: Target 8000"])
    paragraph = "A sentence of about sixty characters, said once and then again. " * 6
    table = "| a | b |\n|---|---|\n" + "\n".join(f"| row {i} | {'text ' * 60} |" for i in range(8))
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("## Why\n\n" + "\n\n".join([paragraph] * 6) + "\n\n### Detail\n\nShort."),
        _code_cell([error]),
        _code_cell([nbformat.v4.new_output("display_data", data={"text/markdown": table, "text/plain": "<md>"})]),
    ])
    slides = build_slides.prepare(notebook)
    markdown = [cell for cell in slides.cells if cell.cell_type == "markdown"]
    assert len(markdown) >= 3 and markdown[0].source.startswith("## Why")
    assert markdown[-1].source == "### Detail\n\nShort.", "a heading inside a cell turns the slide"
    assert all(build_slides.markdown_lines(cell.source) <= build_slides.LINE_BUDGET for cell in markdown)
    assert [cell.metadata["slideshow"]["slide_type"] for cell in markdown[1:]] == ["subslide"] * (len(markdown) - 1)
    shown_error = next(output for cell in slides.cells for output in cell.get("outputs", [])
                       if output.output_type == "error")
    assert shown_error.traceback == ["IndexError: Target 8000 is out of bounds."]
    tables = [output.data["text/markdown"] for cell in slides.cells for output in cell.get("outputs", [])
              if "text/markdown" in output.get("data", {})]
    assert len(tables) > 1, "a table longer than a screen continues on the next slide"
    assert all(part.startswith("| a | b |\n|---|---|\n") for part in tables), "each part keeps the header"
    assert sum(part.count("| row ") for part in tables) == 8


def test_a_real_deck_hides_its_code_by_default_and_shows_it_on_request(tmp_path):
    deck, = build_slides.build([ONE_PER_FRAMEWORK[0]], tmp_path / "hidden")
    shown, = build_slides.build([ONE_PER_FRAMEWORK[0]], tmp_path / "shown", show_code=True)
    hidden_html, shown_html = deck.read_text(), shown.read_text()
    editor = 'class="jp-CodeMirrorEditor'  # a code cell's input
    assert editor not in hidden_html and editor in shown_html
    assert 'data-figure="1"' in hidden_html
