"""The quickstart in a real JupyterLab, driven by Debian's chromium through Playwright.

It checks what only a browser can: that ``%tune`` draws the live ipywidgets
view (not its text fallback ``VBox(...)``) while it trains, which gives way to a
static loss-curve picture when the run ends, that ``%evaluate``'s HTML report
renders with its charts, and that the saved quickstart, opened untrusted as a fresh
clone opens it, reads well: pictures, tables, no widget text. Screenshots go to ``build/browser-quickstart.png``,
``build/tune-widget.png`` and ``build/comparison.png``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "00_quickstart.ipynb"
BUILD = REPO / "build"

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]

# Bounds, in seconds. The run trains a few LoRA steps on CPU; the machine may be shared.
SERVER_START = 60
KERNEL_IDLE = 90
WIDGET_VISIBLE = 240
ALL_DONE = 300


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian chromium is not installed: apt-get install chromium (the CI script .ci/run does this)")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_notebook(folder: Path, values: dict | None = None) -> Path:
    """The quickstart with epochs=0.1 and limit=8 (or ``values``) in its ``parameters`` cell, outputs cleared."""
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "the quickstart should have exactly one cell tagged 'parameters'"
    values = dict({"epochs": "0.1", "limit": "8"} if values is None else values)
    lines = []
    for line in params[0].source.splitlines():
        m = re.match(r"(\s*)(\w+)(\s*=\s*)([^#]*?)(\s*#.*)?$", line)
        if m and m.group(2) in values:
            line = f"{m.group(1)}{m.group(2)}{m.group(3)}{values.pop(m.group(2))}{m.group(5) or ''}"
        lines.append(line)
    assert not values, f"parameters cell lacks {sorted(values)}"
    params[0].source = "\n".join(lines)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    path = folder / NOTEBOOK.name
    nbformat.write(nb, path)
    return path


def _lab_settings(folder: Path) -> Path:
    """User settings for a quiet, deterministic JupyterLab: no news toast, every cell in the DOM."""
    settings = {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                            "checkForUpdates": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }
    for name, value in settings.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    return folder


def _server_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    # conftest sets NBKIT_PROGRESS=plain for the test process; the kernel must decide for itself
    # (it sees jupyterlab among its ancestors and chooses the widget).
    env.pop("NBKIT_PROGRESS", None)
    env.pop("NBKIT_JOB_DIR", None)
    env.update({
        "NBKIT_RUNS_DIR": str(tmp_path / "runs"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter" / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter" / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "jupyter" / "data"),
        "JUPYTERLAB_SETTINGS_DIR": str(_lab_settings(tmp_path / "jupyter" / "lab-settings")),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "jupyter" / "workspaces"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    })
    return env


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server, its process group and its kernels (which jupyter_client starts in their own sessions)."""
    try:
        import psutil

        family = psutil.Process(proc.pid).children(recursive=True)
    except Exception:
        family = []
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        if proc.poll() is not None and not any(_alive(p) for p in family):
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        for p in family:
            try:
                p.send_signal(sig)
            except Exception:
                pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_alive(p) for p in family):
            time.sleep(0.2)


def _alive(process) -> bool:
    try:
        return process.is_running() and process.status() != "zombie"
    except Exception:  # psutil.NoSuchProcess: gone meanwhile
        return False


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _wait_for_server(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"jupyter lab did not answer within {SERVER_START} s:\n{_tail(log)}")


# The status bar shows a connected kernel that is idle ("Python 3 (ipykernel) | Idle"). The toolbar's
# execution indicator says "idle" already while the kernel is still "No Kernel | Initializing".
_KERNEL_IDLE = """() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(
    e => /\\|\\s*Idle\\s*$/.test(e.textContent) && !/No Kernel/.test(e.textContent))"""

# Input prompts of the code cells: "[ ]:" not run, "[*]:" queued or running, "[3]:" done.
_PROMPTS = "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim())"

# Run All has finished: some cell ran and none is queued or running (a cell that fails clears the queue).
_RUN_FINISHED = """() => {
    const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim());
    return prompts.some(t => /\\d/.test(t)) && !prompts.some(t => t.includes('*'));
}"""

# Text of every error or stderr output (JupyterLab renders both as the stderr mime type).
_ERROR_OUTPUTS = """() => [...document.querySelectorAll(
    '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')].map(e => e.innerText)"""


def test_quickstart_in_jupyterlab(tmp_path):
    run_in_jupyterlab(tmp_path)


def run_in_jupyterlab(tmp_path: Path, values: dict | None = None) -> None:
    """Run All on the quickstart (``values`` in its parameters cell) in JupyterLab, check what it drew, and
    leave screenshots in build/ (docs/screenshots.py runs this with the quickstart's own parameters)."""
    pytest.importorskip("ipywidgets", reason="ipywidgets is not installed")

    root = tmp_path / "lab"  # the file browser shows only the notebook
    root.mkdir()
    notebook = _tiny_notebook(root, values)
    with _jupyterlab(tmp_path, root) as (page, base, token, log):
        _drive(page, f"{base}/lab/tree/{notebook.name}?token={token}", log)


@contextlib.contextmanager
def _jupyterlab(tmp_path: Path, root: Path):
    """A JupyterLab server on ``root`` and a chromium page: yields ``(page, base URL, token, server log)``."""
    chromium = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed")
    port, token = _free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        cmd.append("--allow-root")
    BUILD.mkdir(exist_ok=True)
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, cwd=root, env=_server_env(tmp_path), stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_server(server, f"{base}/api/status?token={token}", log)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                yield browser.new_page(viewport={"width": 1400, "height": 1600}), base, token, log
            finally:
                browser.close()
    finally:
        _stop(server)


def _drive(page, url: str, log: Path) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    def shot_on_failure(what: str):
        try:
            page.screenshot(path=str(BUILD / "browser-quickstart-failure.png"), full_page=True)
        except Exception:
            pass
        return f"{what} (screenshot: build/browser-quickstart-failure.png)\nserver log:\n{_tail(log)}"

    (BUILD / "browser-quickstart-failure.png").unlink(missing_ok=True)
    page.goto(url, timeout=60_000)
    try:
        # The notebook is open and its kernel has started.
        page.locator(".jp-Notebook .jp-CodeCell").first.wait_for(timeout=60_000)
        page.wait_for_function(_KERNEL_IDLE, timeout=KERNEL_IDLE * 1000, polling=250)
    except PlaywrightTimeout:
        pytest.fail(shot_on_failure("the notebook did not open with an idle kernel"))

    # Run ▸ Run All Cells, as a user would.
    page.locator(".lm-MenuBar-item").filter(has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item:not(.lm-mod-disabled) .lm-Menu-itemLabel").filter(
        has_text=re.compile(r"^Run All Cells$")).click()

    widget = page.locator(".jp-OutputArea-output .nbkit-tune-widget")
    try:
        # The live widget shows up while %tune trains: a progress bar, not its text fallback "VBox(...)".
        page.wait_for_function("() => !!document.querySelector('.jp-OutputArea-output .nbkit-tune-widget "
                               f".progress-bar') || ({_RUN_FINISHED})()", timeout=WIDGET_VISIBLE * 1000, polling=100)
    except PlaywrightTimeout:
        pytest.fail(shot_on_failure(f"neither a %tune widget nor the end of the run within {WIDGET_VISIBLE} s; "
                                    f"prompts {page.evaluate(_PROMPTS)}"))
    fallback = page.locator(".jp-OutputArea-output", has_text="VBox(").count()
    assert widget.count() == 1, shot_on_failure(
        f"no live %tune widget while training ({fallback} text fallbacks 'VBox(...)')")
    # its loss curve once two steps are in (or the run ends first and the widget gives way to its picture)
    page.wait_for_function("() => !!document.querySelector('.nbkit-tune-widget svg.nbkit-loss polyline') || "
                           "!document.querySelector('.nbkit-tune-widget')", timeout=ALL_DONE * 1000, polling=100)
    if widget.count():  # the screenshot of the widget at work, for the README
        try:
            page.evaluate("() => document.activeElement && document.activeElement.blur()")
            widget.evaluate("e => e.closest('.jp-Cell').scrollIntoView({block: 'start'})")
            widget.screenshot(path=str(BUILD / "tune-widget.png"), timeout=5_000)
        except Exception:  # it ended while the picture was taken: the checks below still hold
            pass
    try:
        page.wait_for_function(_RUN_FINISHED, timeout=ALL_DONE * 1000, polling=500)
        page.wait_for_function(_KERNEL_IDLE, timeout=30_000, polling=250)
    except PlaywrightTimeout:
        pytest.fail(shot_on_failure(f"the notebook did not finish within {ALL_DONE} s; prompts "
                                    f"{page.evaluate(_PROMPTS)}; stderr/errors: {page.evaluate(_ERROR_OUTPUTS)}"))

    errors = [t for t in page.evaluate(_ERROR_OUTPUTS)
              if "Traceback" in t or re.search(r"^\s*\w*(Error|Exception)\b", t, re.M)]
    assert not errors, shot_on_failure(f"a cell shows an error: {errors}")
    prompts = page.evaluate(_PROMPTS)
    assert all(re.fullmatch(r"\[\d+\]:", t) for t in prompts), shot_on_failure(f"not every cell ran: {prompts}")

    # The run ended: the widget gave way to its static form, one loss-curve picture (what a saved notebook keeps)
    assert widget.count() == 0, shot_on_failure("the %tune widget is still shown after the run ended")
    curve = page.locator(".jp-OutputArea-output img[src^='data:image/png']")
    assert curve.count() == 1, shot_on_failure(f"expected one static loss-curve image, found {curve.count()}")

    # Both %evaluate reports rendered as HTML: 'before' and, after %tune, the comparison.
    reports = page.locator(".jp-OutputArea-output table.nbkit-report")
    assert reports.count() >= 2, f"expected the two %evaluate reports, found {reports.count()}"
    last = reports.last
    last.wait_for(state="visible", timeout=10_000)
    assert last.locator("tbody tr").count() >= 2, "the comparison report should have a row per model"
    assert _pictures_drawn(page, "img.nbkit-chart") >= 1, shot_on_failure("the bar chart did not draw")

    # Screenshots: the comparison, and the whole notebook.
    page.locator(".jp-OutputArea-output").filter(has=page.locator("table.nbkit-report")).last.screenshot(
        path=str(BUILD / "comparison.png"))
    page.screenshot(path=str(BUILD / "browser-quickstart.png"), full_page=True)


def _pictures_drawn(page, selector: str) -> int:
    """How many of the output pictures ``selector`` finds the browser decoded and drew (a broken SVG is 0 wide)."""
    page.wait_for_timeout(200)
    return page.evaluate("sel => [...document.querySelectorAll(sel)].filter(i => i.complete && i.naturalWidth > 0)"
                         ".length", f".jp-OutputArea-output {selector}")


def test_the_saved_quickstart_reads_well_untrusted(tmp_path):
    """A freshly cloned notebook is untrusted: JupyterLab sanitises its HTML (no inline SVG, no styling) and draws
    no saved widgets. The saved quickstart, opened so and not run, shows the %tune cell's loss-curve picture and no
    widget text, and the reports' tables, bar charts and confusion matrices as pictures the browser drew."""
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)  # a copy, never trusted here: as a clone opens it
    with _jupyterlab(tmp_path, root) as (page, base, token, log):
        page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}", timeout=60_000)
        page.locator(".jp-Notebook .jp-OutputArea-output").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        cells = page.locator(".jp-Notebook .jp-CodeCell")
        cells.last.evaluate("e => e.scrollIntoView()")  # outputs below the fold render too
        page.wait_for_timeout(500)
        text = page.locator(".jp-Notebook").inner_text()
        BUILD.mkdir(exist_ok=True)
        page.screenshot(path=str(BUILD / "untrusted-quickstart.png"), full_page=True)
        assert "VBox(" not in text and "IntProgress(" not in text, "a saved widget shows as its text"
        assert page.locator(".jp-OutputArea-output .nbkit-tune-widget").count() == 0
        assert _pictures_drawn(page, "img[src^='data:image/png']") == 1, "one loss-curve picture"
        assert _pictures_drawn(page, "img.nbkit-chart") >= 2, "the before and after bar charts"
        assert _pictures_drawn(page, "img.nbkit-confusion") >= 2, "the confusion matrices"
        tables = page.locator(".jp-OutputArea-output table.nbkit-report")
        assert tables.count() >= 2 and tables.last.locator("tbody tr").count() >= 2
        # a table whose cells read apart: the first report's first row has its target and its value apart
        first_row = [c.strip() for c in tables.first.locator("tbody tr").first.locator("th, td").all_inner_texts()]
        assert len(first_row) >= 3 and all(first_row[:3]), first_row
        page.locator(".jp-OutputArea-output").filter(has=page.locator("table.nbkit-report")).last.screenshot(
            path=str(BUILD / "untrusted-comparison.png"))
        page.locator(".jp-OutputArea-output").filter(has=page.locator("img[src^='data:image/png']")).first.screenshot(
            path=str(BUILD / "untrusted-tune.png"))
