"""Real Jupyter in a real browser: JupyterLab started as `make lab` starts it, driven by headless Chromium.

Each test opens a notebook, runs all its cells from the Run menu, saves it, and checks that no dialog asked for a
kernel, that no cell failed except those tagged ``raises-exception``, and that every figure rendered as an image
the browser decoded. Two more click links as a student does: 00-start-here's triage map opens its notebook, and
a glossary link opens the glossary at its term, in JupyterLab serving notebooks/ as `make lab` does. And `make
slides` decks are measured at 1280x720, every slide: nothing wider than the screen, no text under 20 px, each figure
alone on its slide and whole on screen. Screenshots go to ``results/screenshots/`` (or ``$NANLAB_SCREENSHOTS``).

Needs Chromium (Debian: ``apt-get install chromium``; ``.ci/run`` installs it) and the ``playwright`` package,
which drives that Chromium (its own browser download is not used). Without them the tests skip and say why.
The notebooks are served from a temporary copy, so the committed ones are never touched.
"""
import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOKEN = "nanlab-browser-test"
SCREENSHOTS = pathlib.Path(os.environ.get("NANLAB_SCREENSHOTS", ROOT / "results" / "screenshots"))
NOTEBOOKS = ["00-start-here.ipynb", "pytorch/01-high-learning-rate.ipynb", "tensorflow/01-high-learning-rate.ipynb"]
RUN_TIMEOUT_S = 240

pytestmark = pytest.mark.browser


def chromium() -> str | None:
    return os.environ.get("NANLAB_CHROMIUM") or next(
        (found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))), None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lab_command(port: int, root_dir: pathlib.Path) -> list[str]:
    """`make lab`'s command (--allow-root only as root), headless, on ``port``, with a known token."""
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
               f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={root_dir}",
               "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    return command


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set NANLAB_CHROMIUM); .ci/run installs it")
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError:
        pytest.skip('playwright is not installed (pip install -e ".[dev]")')
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


def _lab_settings(folder: pathlib.Path, windowing: str | None) -> None:
    """Ask nothing about news; ``windowing="none"`` renders every cell, so that every figure is in the page."""
    settings = {"apputils-extension/notification": '{"fetchNews": "false"}'}
    if windowing is not None:
        settings["notebook-extension/tracker"] = f'{{"windowingMode": "{windowing}"}}'
    for plugin, values in settings.items():
        path = folder / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(values)


def _served_copy(tmp_path_factory) -> pathlib.Path:
    served = tmp_path_factory.mktemp("lab") / "notebooks"
    # notebooks/ alone, as a handout has it: a notebook that reads a file of the repository fails here
    shutil.copytree(ROOT / "notebooks", served, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    return served


@contextlib.contextmanager
def _serve(tmp_path_factory, served: pathlib.Path, windowing: str | None):
    """Start JupyterLab on ``served`` as `make lab` does, with a fresh user-settings folder (``windowing``: the
    notebook windowing mode, None for JupyterLab's default); yields the base URL."""
    settings = tmp_path_factory.mktemp("lab-settings")
    _lab_settings(settings / "settings", windowing)
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(settings / "workspaces"), CUDA_VISIBLE_DEVICES="")
    port = _free_port()
    log = open(settings / "lab.log", "w")
    server = subprocess.Popen(lab_command(port, served), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.terminate()
                pytest.fail(f"JupyterLab did not start: {(settings / 'lab.log').read_text()[-2000:]}")
            time.sleep(0.5)
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, browser):
    """JupyterLab serving a copy of notebooks/, every cell rendered; yields (base URL, served folder)."""
    served = _served_copy(tmp_path_factory)
    for name in NOTEBOOKS:  # served without outputs, so that every prompt and figure the test sees is this run's
        notebook = nbformat.read(served / name, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(notebook, served / name)
    with _serve(tmp_path_factory, served, windowing="none") as url:
        yield url, served


@pytest.fixture(scope="module")
def lab_as_installed(tmp_path_factory, browser):
    """JupyterLab with its own default settings (a student's), serving a copy of notebooks/ as committed."""
    served = _served_copy(tmp_path_factory)
    with _serve(tmp_path_factory, served, windowing=None) as url:
        yield url, served


PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook in front


def _menu(page, menu: str, command: str) -> None:
    page.locator(".lm-MenuBar-item", has_text=menu).first.click(timeout=10_000)
    page.locator(f'.lm-Menu-item[data-command="{command}"]').click(timeout=10_000)


def _prompts_all(page, pattern: str, timeout_s: float) -> None:
    """Wait until every code cell's prompt in the front notebook matches ``pattern`` (a JS regex)."""
    page.wait_for_function(
        f"""() => {{
            const prompts = [...document.querySelectorAll('{PANEL} .jp-CodeCell .jp-InputArea-prompt')];
            return prompts.length > 0 && prompts.every(p => /{pattern}/.test(p.textContent));
        }}""", timeout=timeout_s * 1000)


def _some_prompt(page, pattern: str, timeout_s: float) -> None:
    """Wait until some code cell's prompt in the front notebook matches ``pattern`` (a JS regex)."""
    page.wait_for_function(
        f"""() => [...document.querySelectorAll('{PANEL} .jp-CodeCell .jp-InputArea-prompt')]
                  .some(p => /{pattern}/.test(p.textContent))""", timeout=timeout_s * 1000)


def _open(page, url: str, name: str) -> None:
    """Open ``name`` in a fresh workspace; wait until its kernel is idle or a dialog is up."""
    workspace = name.replace("/", "-").removesuffix(".ipynb")
    page.goto(f"{url}/lab/workspaces/{workspace}/tree/{name}?reset&token={TOKEN}", wait_until="domcontentloaded")
    page.wait_for_function(
        f"""() => document.querySelector('.jp-Dialog') ||
                  document.querySelector('{PANEL} .jp-Notebook-ExecutionIndicator[data-status="idle"]')""",
        timeout=90_000)


def _run_all_and_save(page) -> None:
    """Run every cell of the served (output-less) notebook from the Run menu, wait for the last one, save."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    _prompts_all(page, r"^\[ \]", timeout_s=30)
    for _ in range(3):  # a menu click during JupyterLab's start-up work can be swallowed: click again if nothing runs
        page.keyboard.press("Escape")
        try:
            _menu(page, "Run", "runmenu:run-all")
            _some_prompt(page, r"^\[(\*|\d+)\]", timeout_s=20)
            break
        except PlaywrightTimeout:  # the menu did not open, or its click started nothing
            continue
    _prompts_all(page, r"^\[\d+\]", timeout_s=RUN_TIMEOUT_S)
    page.keyboard.press("Control+s")
    page.wait_for_function("() => !document.querySelector('.jp-mod-dirty')", timeout=60_000)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_jupyterlab_in_chromium(lab, browser, name):
    url, served = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    started = time.perf_counter()
    _open(page, url, name)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    if page.locator(".jp-Dialog").count():
        page.screenshot(path=str(SCREENSHOTS / f"{name.replace('/', '-')}-dialog.png"))
        pytest.fail(f"a dialog opened with the notebook: {page.locator('.jp-Dialog').inner_text()[:200]!r} "
                    "(a notebook without kernelspec metadata asks to select a kernel)")
    loaded = time.perf_counter() - started
    try:
        _run_all_and_save(page)
    finally:  # what the page showed, also when a wait timed out
        page.screenshot(path=str(SCREENSHOTS / f"{name.replace('/', '-')}.png"))
    ran = time.perf_counter() - started - loaded

    saved = nbformat.read(served / name, as_version=4)
    code = [cell for cell in saved.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), "ran top to bottom, once"
    errors = [cell for cell in code for output in cell.outputs if output.output_type == "error"]
    assert all("raises-exception" in cell.metadata.get("tags", []) for cell in errors), \
        [cell.source[:80] for cell in errors if "raises-exception" not in cell.metadata.get("tags", [])]
    assert not [output for cell in code for output in cell.outputs if output.get("name") == "stderr"]
    figures = sum("image/png" in output.get("data", {}) for cell in code for output in cell.outputs)
    assert figures >= 1, "the notebook draws at least one figure"
    decoded = page.evaluate(f"""() => [...document.querySelectorAll('{PANEL} .jp-OutputArea-output img')]
                                   .filter(img => img.complete && img.naturalWidth > 0).length""")
    assert decoded == figures, f"{decoded} of {figures} figures rendered in the browser"
    print(f"{name}: page loaded in {loaded:.1f} s, ran all cells in {ran:.1f} s")
    page.close()


# `make slides` on a projector: every slide of a few decks, at 1280x720, in the same Chromium.
SLIDE_DECKS = ["00-start-here.ipynb", "pytorch/01-high-learning-rate.ipynb",
               "tensorflow/06-exploding-rnn-gradients.ipynb", "pytorch/90-hunt-your-own-nan.ipynb"]
PROJECTOR = {"width": 1280, "height": 720}
MIN_FONT_PX = 20

# For the slide on screen: what sticks out left or right of the window, what is clipped or scrolls sideways, text
# smaller than MIN_FONT_PX on screen (MathJax's sub- and superscripts aside), and each figure's box.
MEASURE_SLIDE = """(minFont) => {
    const slide = Reveal.getCurrentSlide(), scale = Reveal.getScale(), width = window.innerWidth;
    const name = el => el.tagName.toLowerCase() + (el.className && typeof el.className === 'string'
                       ? '.' + el.className.trim().split(/\\s+/).join('.') : '');
    const wide = [], clipped = [], small = [];
    for (const el of [slide, ...slide.querySelectorAll('*')]) {
        if (el.closest('aside.notes, .MJX_Assistive_MathML')) continue;  // notes; MathJax's copy for screen readers
        const box = el.getBoundingClientRect();
        if (box.width === 0 || box.height === 0) continue;
        if (box.right > width + 1 || box.left < -1)
            wide.push(`${name(el)} spans ${box.left.toFixed(0)}..${box.right.toFixed(0)}`);
        const overflowX = getComputedStyle(el).overflowX;
        if (overflowX !== 'visible' && el.scrollWidth > el.clientWidth + 1)
            clipped.push(`${name(el)}: ${el.scrollWidth} px of content in ${el.clientWidth}`);
        const text = [...el.childNodes].some(node => node.nodeType === 3 && node.textContent.trim());
        if (text && !el.closest('.MathJax, .MathJax_Display, .MathJax_Preview, math')) {
            const px = parseFloat(getComputedStyle(el).fontSize) * scale;
            if (px < minFont - 0.05)
                small.push(`${name(el)} ${px.toFixed(1)} px: ${el.textContent.trim().slice(0, 40)}`);
        }
    }
    const figures = slide.hasAttribute('data-figure')
        ? [...slide.querySelectorAll('img')].map(img => img.getBoundingClientRect())
              .map(box => ({left: box.left, right: box.right, bottom: box.bottom,
                            width: box.width, height: box.height}))
        : [];
    return {wide, clipped, small, figures, imgs: slide.querySelectorAll('img').length};
}"""


@pytest.fixture(scope="module")
def decks(tmp_path_factory):
    from tools import build_slides

    out = tmp_path_factory.mktemp("slides")
    return dict(zip(SLIDE_DECKS, build_slides.build([ROOT / "notebooks" / name for name in SLIDE_DECKS], out)))


@pytest.mark.parametrize("name", SLIDE_DECKS)
def test_every_slide_fits_a_1280x720_projector(browser, decks, name):
    page = browser.new_page(viewport=PROJECTOR)
    page.goto(decks[name].as_uri())
    page.wait_for_function("() => window.Reveal && Reveal.isReady()", timeout=30_000)
    page.wait_for_function("() => !window.MathJax || !MathJax.Hub || (MathJax.Hub.queue.pending === 0 && "
                           "MathJax.Hub.queue.running === 0)", timeout=30_000)
    slides = page.evaluate("""() => [...document.querySelectorAll('.reveal .slides > section')].flatMap(
        (stack, h) => { const inner = stack.querySelectorAll(':scope > section');
                        return inner.length ? [...inner].map((_, v) => [h, v]) : [[h, 0]]; })""")
    assert len(slides) == page.evaluate("() => Reveal.getTotalSlides()") > 3
    problems, figures, shot = [], 0, None
    for h, v in slides:
        page.evaluate(f"() => Reveal.slide({h}, {v})")
        found = page.evaluate(MEASURE_SLIDE, MIN_FONT_PX)
        where = f"slide {h}.{v}"
        problems += [f"{where}: wider than the screen: {item}" for item in found["wide"][:3]]
        problems += [f"{where}: clipped or scrolling sideways: {item}" for item in found["clipped"][:3]]
        problems += [f"{where}: text under {MIN_FONT_PX} px: {item}" for item in found["small"][:3]]
        if found["figures"]:
            figures += 1
            if len(found["figures"]) != 1 or found["imgs"] != 1:
                problems.append(f"{where}: {found['imgs']} images on a figure's slide (one figure per slide)")
            box = found["figures"][0]
            if box["right"] > PROJECTOR["width"] + 1 or box["bottom"] > PROJECTOR["height"] + 1 or box["left"] < -1:
                problems.append(f"{where}: the figure is cut off: {box}")
            if box["height"] < 0.75 * PROJECTOR["height"] and box["width"] < 0.9 * PROJECTOR["width"]:
                problems.append(f"{where}: the figure does not fill the screen: {box}")
            if shot is None:
                shot = SCREENSHOTS / f"slides-{name.replace('/', '-').removesuffix('.ipynb')}-figure.png"
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shot))
        elif found["imgs"]:
            problems.append(f"{where}: an image outside a figure slide")
    page.close()
    assert not problems, problems
    if name != "00-start-here.ipynb" or figures:
        assert figures >= 1, "the deck's figures were found and checked"
    print(f"{name}: {len(slides)} slides, {figures} figure slides checked at 1280x720")


# Links, clicked as a student clicks them (the served folder is make lab's root: notebooks/).
def _front_tab_path(page) -> str:
    """The path of the document in front, from its tab's tooltip ("Name: …\\nPath: …")."""
    title = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.jp-mod-current").first.get_attribute("title") or ""
    return next((line.removeprefix("Path: ").strip() for line in title.splitlines() if line.startswith("Path:")), "")


def _click_link(page, target: str, opens: str) -> None:
    """Click the link to ``target`` (a path in the served folder, with its #fragment if any): JupyterLab renders a
    relative link as /files/<the path it resolves to>?_xsrf=…#fragment and opens that document when it is clicked."""
    path, _, fragment = target.partition("#")
    selector = f'{PANEL} a[href*="/files/{path}?"]' + (f'[href$="#{fragment}"]' if fragment else "")
    link = page.locator(selector).first
    link.scroll_into_view_if_needed(timeout=30_000)
    link.click(timeout=10_000)
    page.wait_for_function(
        """(opens) => document.querySelector('.jp-Dialog') || [...document.querySelectorAll(
              '.lm-DockPanel-tabBar .lm-TabBar-tab.jp-mod-current')].some(tab => (tab.title || '').includes(opens))""",
        arg=opens, timeout=60_000)
    if page.locator(".jp-Dialog").count():
        pytest.fail(f"clicking the link to {target} opened a dialog: {page.locator('.jp-Dialog').inner_text()[:200]!r}")


def test_a_triage_map_link_opens_its_notebook_in_jupyterlab(lab, browser):
    url, served = lab
    start = served / "00-start-here.ipynb"
    if not any(output.get("data", {}).get("text/markdown", "").startswith("| cause")
               for cell in nbformat.read(start, as_version=4).cells for output in cell.get("outputs", [])):
        shutil.copy(ROOT / "notebooks" / "00-start-here.ipynb", start)  # the triage map as committed, outputs in
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    _open(page, url, "00-start-here.ipynb")
    _click_link(page, "pytorch/01-high-learning-rate.ipynb", opens="Path: pytorch/01-high-learning-rate.ipynb")
    page.wait_for_function(f"() => document.querySelector('{PANEL} .jp-Notebook-ExecutionIndicator')",
                           timeout=60_000)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "triage-link-opened.png"))
    assert _front_tab_path(page) == "pytorch/01-high-learning-rate.ipynb"
    assert page.locator(PANEL).first.get_by_text("Learning rate too high").count(), "the notebook's own content"
    page.close()


def test_a_glossary_link_opens_the_glossary_at_its_term(lab_as_installed, browser):
    """The link at pytorch/06's first use of "spectral radius" opens the glossary scrolled to that entry, ~3,500 px
    down, in JupyterLab as a student has it. The link is ``glossary.ipynb#cell-id=Spectral-radius``: a link to
    ``#Spectral-radius`` (the heading) opens the glossary at its top, measured in JupyterLab 4.6, since it is
    looked for before the cells render (tests/test_links.py keeps every link into another notebook a cell-id)."""
    url, served = lab_as_installed
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    _open(page, url, "pytorch/06-exploding-rnn-gradients.ipynb")
    _click_link(page, "glossary.ipynb#cell-id=Spectral-radius", opens="Path: glossary.ipynb")
    heading = page.locator(f'{PANEL} [data-jupyter-id="Spectral-radius"]').first
    heading.wait_for(state="attached", timeout=30_000)
    page.wait_for_function(  # the entry's heading in view, below the toolbar and above the window's bottom
        f"""() => {{ const panel = document.querySelector('{PANEL} .jp-Notebook').getBoundingClientRect();
                    const top = document.querySelector('{PANEL} [data-jupyter-id="Spectral-radius"]')
                                        .getBoundingClientRect().top;
                    return top >= panel.top && top < Math.min(panel.bottom, window.innerHeight) - 40; }}""",
        timeout=30_000)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "glossary-link-opened.png"))
    assert _front_tab_path(page) == "glossary.ipynb"
    page.close()
