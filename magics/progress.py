"""How to show training progress: a live widget in a Jupyter frontend, plain lines elsewhere."""

from __future__ import annotations

import os
import sys

from IPython.display import display

from nbkit.events import Callback, PlainProgress

# Ancestor processes that say who is running the kernel.
_FRONTENDS = ("jupyter-lab", "jupyter-notebook", "jupyter-server", "jupyter_server", "jupyterlab",
              "notebook", "voila", "vscode", "code-server")
_HEADLESS = ("papermill", "nbconvert", "nbclient", "pytest", "nbval", "nbkit")


def _ancestors(limit: int = 8):
    """For each ancestor process, the program names in its first arguments (Linux)."""
    pid = os.getppid()
    for _ in range(limit):
        if pid <= 1:
            return
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").lower().split("\0")[:3]
            yield " ".join(os.path.basename(a) for a in argv)
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return


def progress_mode(requested: str = "auto") -> str:
    """``widget``, ``plain`` or ``none``.

    ``auto`` honours ``$NBKIT_PROGRESS``; outside an IPython kernel it is
    ``plain``; inside one it walks up the process tree to the first program it
    recognises: a Jupyter server means a live frontend (``widget``), papermill,
    nbconvert or pytest mean nobody watches (``plain``). Colab is a frontend.
    """
    if requested != "auto":
        return requested
    env = os.environ.get("NBKIT_PROGRESS", "").strip().lower()
    if env in ("widget", "plain", "none"):
        return env
    if "ipykernel" not in sys.modules:
        return "plain"
    if "COLAB_RELEASE_TAG" in os.environ or "VSCODE_PID" in os.environ:
        return "widget"
    for names in _ancestors():
        words = set(names.replace(".py", "").split())
        if words & set(_HEADLESS):
            return "plain"
        if any(f in names for f in _FRONTENDS):
            return "widget"
    return "widget"


class WidgetPerRun(Callback):
    """A fresh ``%tune`` widget for each run of ``%evaluate --versus``; its notes as plain lines."""

    def __init__(self):
        self.widget = None

    def on_begin(self, e):
        from .widgets import TuneWidget

        self.widget = TuneWidget(display=display)
        self.widget.on_begin(e)

    def on_step(self, e):
        self.widget.on_step(e)

    def on_evaluate(self, e):
        self.widget.on_evaluate(e)

    def on_end(self, e):
        self.widget.on_end(e)
        self.widget = None

    def on_note(self, text):
        if self.widget is not None:
            self.widget.on_note(text)
        else:
            print(text, flush=True)


def callbacks(progress: str, *, per_run: bool = False) -> list:
    """Progress subscribers as ``--progress`` picks them: a widget (with ``per_run``, a fresh one for
    each of several runs), plain lines, or none."""
    mode = progress_mode(progress)
    if mode == "widget":
        if per_run:
            return [WidgetPerRun()]
        from .widgets import TuneWidget

        return [TuneWidget(display=display)]
    return [PlainProgress()] if mode == "plain" else []
