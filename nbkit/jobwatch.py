"""What ``nbkit run`` shows while a notebook job runs, and what Ctrl-C does to it.

papermill runs the notebook in a kernel of its own session, which a terminal's Ctrl-C never
reaches: left alone, Ctrl-C tears papermill down mid-cell (asyncio tracebacks), and the kernel is
then killed with SIGTERM, so a training run records "stopped by SIGTERM". :class:`Watch` instead
passes the first Ctrl-C on to the kernel as an interrupt, which stops the running cell the way
Jupyter's stop button does (``%tune`` saves its checkpoint and marks the run interrupted); a second
Ctrl-C stops at once. It also prints each cell as it starts, through nbclient's ``on_cell_start``
hook, while the cells' own printed lines (the plain training lines) pass through as they come.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path


def kernel_processes() -> list[int]:
    """The process ids of this process's children: the kernel papermill started (psutil where installed, else
    Linux's /proc)."""
    me = os.getpid()
    try:
        import psutil

        return [p.pid for p in psutil.Process(me).children()]
    except ImportError:
        pass
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # the field after the state is the parent's id
            found.append(int(stat.parent.name))
    return found


class Stopped(Exception):
    """Raised into papermill when a cell would start after Ctrl-C (an idle kernel has nothing to interrupt)."""


class Watch:
    """Cell-by-cell progress lines and a Ctrl-C that interrupts the running cell, for one papermill run."""

    def __init__(self, show: bool = True, out=None):
        self.show, self.out = show, out or sys.stdout
        self.interrupted, self.cells, self.done = False, 0, 0

    def engine_options(self) -> dict:
        """What papermill passes on to nbclient: the hooks, and the cells' stream output as it comes."""
        # ipykernel 7 warns on its stderr, which is the terminal's, that it talks over local TCP unencrypted
        quiet = {"extra_arguments": ["--IPKernelApp.log_level=ERROR"]}
        if not self.show:
            return quiet
        return dict(on_notebook_start=self._notebook_start, on_cell_start=self._cell_start,
                    stdout_file=self.out, stderr_file=sys.stderr, **quiet)

    def _notebook_start(self, notebook, **_):
        self.cells = sum(1 for c in notebook.cells if c.cell_type == "code")

    def _cell_start(self, cell, cell_index, **_):
        if cell.cell_type != "code":  # nbclient calls the hook for markdown cells too
            return
        if self.interrupted:
            raise Stopped("interrupted by the user (Ctrl-C) before this cell")
        self.done += 1
        first = next((line for line in cell.source.splitlines() if line.strip()), "")
        more = " …" if len(cell.source.strip().splitlines()) > 1 else ""
        print(f"nbkit: cell {self.done}/{self.cells}: {first[:100]}{more}", file=self.out, flush=True)

    def _on_sigint(self, signum, frame):
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        print("\nnbkit: Ctrl-C: interrupting the running cell; the job stops after it (Ctrl-C again: at once)",
              file=sys.stderr, flush=True)
        for pid in kernel_processes():
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGINT)  # the kernel leads its own session, as Jupyter's interrupt does

    @contextlib.contextmanager
    def interruptible(self):
        """Ctrl-C goes to the kernel while the job runs (only where this thread may handle signals)."""
        try:
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread: Ctrl-C keeps its usual meaning
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)
