"""The notebooks in a real browser (slow tier): JupyterLab on 127.0.0.1 with a token, driven through
headless Debian Chromium (/usr/bin/chromium) by Playwright, nothing downloaded at test time.

Notebook 10: run every cell from the menu, check that no cell shows an error, drag the w slider of the
eq. 14 explorer (ipywidgets) with the mouse, and check from the page that the figure changed (its
image, and the slider's readout). Exercise 1: type a solution into the stub, run it and its check cell,
and read the check's ✓ from the page. Screenshots before and after go to build/test-artefacts/browser/
(or $RWKV_NP_ARTEFACTS). The notebooks run on copies in a temporary folder: the checkout is not touched.

What it needs, and .ci/run installs: Debian's `chromium` (apt), `playwright` and `jupyterlab`,
`ipywidgets` (requirements.txt). Where one is missing the test says which; under CI it fails.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from helpers import REPO

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("RWKV_NP_CHROMIUM", "/usr/bin/chromium"))
ARTEFACTS = Path(os.environ.get("RWKV_NP_ARTEFACTS", REPO / "build" / "test-artefacts" / "browser"))
# the flags a closed network needs (no background connections, no component updates), as root: no sandbox
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage"]
NOTEBOOK_10 = "notebooks/10_eq14_by_hand.ipynb"
EXERCISE_1 = "notebooks/exercises/01_token_shift.ipynb"
RUN_TIMEOUT = 240_000  # ms: every cell of notebook 10 on a loaded 2-core machine


def missing() -> list[str]:
    out = []
    if not CHROMIUM.exists():
        out.append(f"Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    for module, package in (("playwright.sync_api", "playwright"), ("jupyterlab", "jupyterlab"),
                            ("ipywidgets", "ipywidgets")):
        try:
            __import__(module)
        except ImportError:
            out.append(f"the Python package {package} (pip install -r requirements.txt)")
    return out


def need_browser():
    lacking = missing()
    if lacking:
        message = "the browser tests cannot run: missing " + "; ".join(lacking) + " (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 over a copy of notebooks/, with a token; (base URL, token, root)."""
    need_browser()
    root = tmp_path_factory.mktemp("lab")
    for path in (NOTEBOOK_10, EXERCISE_1):  # copies without outputs: every output on the page is this run's
        nb = nbformat.read(REPO / path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, root / path)
    (root / "figures").mkdir()
    home = root / "home"
    # no news or update checks (the network is closed), and the notebook's own kernel without asking
    settings = home / "settings" / "@jupyterlab"
    for name, value in (("apputils-extension/notification", {"fetchNews": "false", "checkForUpdates": False}),
                        ("notebook-extension/tracker", {"autoStartDefaultKernel": True,
                                                         "windowingMode": "none"})):  # every cell in the page
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{name}.jupyterlab-settings").write_text(json.dumps(value))
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, HOME=str(home), JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
               JUPYTER_DATA_DIR=str(home / "data"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
               OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MPLBACKEND="module://matplotlib_inline.backend_inline")
    log = open(root / "jupyter.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--ServerApp.port_retries=0", "--LabApp.extension_manager=readonly"]
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"JupyterLab did not start: {(root / 'jupyter.log').read_text()[-2000:]}")
        time.sleep(0.5)
    try:
        yield base, token, root
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def open_notebook(browser, lab, path: str):
    base, token, _ = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    # a workspace of its own: no tab of another test restored beside it
    page.goto(f"{base}/lab/workspaces/t{secrets.token_hex(4)}/tree/{path}?reset&token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    dialog = page.locator(".jp-Dialog button", has_text="Select")  # a kernel to choose, if JupyterLab asks
    try:
        dialog.click(timeout=5_000)
    except Exception:
        pass
    # the kernel is up when the toolbar's execution indicator says idle
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    return page


def menu(page, top: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=top).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def wait_all_run(page, path: str, timeout=RUN_TIMEOUT) -> None:
    """Every code cell of the notebook has an execution count (none waiting as [*] or [ ])."""
    n = sum(c.cell_type == "code" for c in nbformat.read(REPO / path, as_version=4).cells)
    page.wait_for_function(
        "n => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];"
        " return p.length === n && p.every(e => /\\[\\d+\\]/.test(e.textContent)); }", arg=n, timeout=timeout)


def errors_on(page) -> list[str]:
    return page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error'], "
                        ".jp-OutputArea-output:has(.jp-RenderedText[data-mime-type='application/vnd.jupyter.error'])"
                        ).all_inner_texts()


def settle(page, current_src: str, quiet: float = 2.0, timeout: float = 120.0) -> None:
    """Wait until the kernel is idle and the figure has not changed for `quiet` seconds."""
    deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline:
        src = page.evaluate(current_src)
        idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0
        if src != last or not idle:
            last, since = src, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        page.wait_for_timeout(250)
    raise AssertionError("the explorer's figure kept changing")


@pytest.fixture
def page_of(browser, lab, request):
    """open_notebook; the page is closed afterwards, with a screenshot first if the test failed
    (build/test-artefacts/browser/failed-TEST.png)."""
    pages = []

    def opener(path):
        pages.append(open_notebook(browser, lab, path))
        return pages[-1]
    failed = request.session.testsfailed
    (ARTEFACTS / f"failed-{request.node.name}.png").unlink(missing_ok=True)  # a past run's, now stale
    yield opener
    for pg in pages:
        if request.session.testsfailed > failed or sys.exc_info()[0] is not None:
            shot(pg, f"failed-{request.node.name}.png")
        pg.close()


def shot(page, name: str) -> Path:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / name
    page.screenshot(path=str(path), full_page=False)
    return path


def test_notebook_10_explorer_slider_changes_the_figure(page_of):
    page = page_of(NOTEBOOK_10)
    menu(page, "Run", "Run All Cells")
    wait_all_run(page, NOTEBOOK_10)
    assert errors_on(page) == []
    slider = page.locator(".widget-slider").first  # the sliders are w, u, k0..k5, in that order
    slider.wait_for()
    assert slider.locator(".widget-label").inner_text().strip() == "w"
    readout = slider.locator(".widget-readout")
    # interact's output (the redrawn figure) is the last widget output; it is replaced at each redraw
    current_src = "() => { const o = document.querySelectorAll('.widget-output'); const i = o.length ? " \
                  "o[o.length - 1].querySelector('img') : null; return i ? i.getAttribute('src') : null; }"
    page.wait_for_function(f"() => ({current_src})() !== null")
    before_value, before_src = readout.inner_text().strip(), page.evaluate(current_src)
    assert before_value == "0.50" and before_src.startswith("data:image/png;base64,")
    slider.scroll_into_view_if_needed()
    page.mouse.wheel(0, 250)  # the sliders and the figure below them in view
    before_png = shot(page, "10_explorer_before.png")
    # drag the handle to the right with the mouse, as a reader would
    box = slider.locator(".noUi-handle").bounding_box()
    track = slider.locator(".noUi-target").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(track["x"] + 0.6 * track["width"], y, steps=12)
    page.mouse.up()
    page.wait_for_function("([el, old]) => el.textContent.trim() !== old", arg=[readout.element_handle(), before_value])
    page.wait_for_function(f"old => {{ const s = ({current_src})(); return s !== null && s !== old; }}",
                           arg=before_src, timeout=60_000)
    settle(page, current_src)  # the drag sent several values: wait for the redraw of the last one
    after_value, after_src = float(readout.inner_text()), page.evaluate(current_src)
    assert 2.0 < after_value <= 5.0 and after_src != before_src and after_src.startswith("data:image/png;base64,")
    after_png = shot(page, "10_explorer_after.png")
    assert errors_on(page) == []
    assert before_png.stat().st_size > 10_000 and after_png.stat().st_size > 10_000


SOLUTION = "def token_shift(x, x_prev):\n    return np.concatenate([x_prev[None], x[:-1]]).astype(x.dtype)"


def test_exercise_1_check_reads_a_tick_once_the_stub_is_filled(page_of):
    page = page_of(EXERCISE_1)
    cells = page.locator(".jp-Notebook .jp-Cell")
    stub = cells.filter(has_text="raise NotImplementedError").first
    index = cells.evaluate_all("(cs, s) => cs.findIndex(c => c.textContent.includes('def token_shift'))", None)
    assert index > 0
    # run the imports, then replace the stub's code with a solution typed into its editor
    cells.nth(index).locator(".jp-InputPrompt").click()  # select the stub's cell (command mode)
    menu(page, "Run", "Run All Above Selected Cell")
    page.wait_for_function("() => /\\[1\\]/.test(document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')[0]"
                           ".textContent)", timeout=120_000)
    stub.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(SOLUTION)
    page.keyboard.press("Shift+Enter")  # run the solution; the check cell below is selected
    page.keyboard.press("Shift+Enter")  # run the check
    check = cells.nth(index + 1)
    check.locator(".jp-OutputArea-output").first.wait_for(timeout=120_000)
    text = check.locator(".jp-OutputArea-output").first.inner_text()
    check.scroll_into_view_if_needed()
    shot(page, "exercise_01_check.png")
    assert text.startswith("✓ check_token_shift: all"), text
    assert errors_on(page) == []
