"""nbkit's exceptions.

Every mistake a user can make raises a subclass of :class:`NbkitError`. The
errors carry their facts as fields (``name``, ``available``, ``variable``, …)
so callers can act on them without parsing messages, and they render as one
short line in IPython instead of a long traceback: a user mistake is not a bug.
"""

from __future__ import annotations

# The name on the package index. `nbkit` there is another project (a 2023 notebook toolkit), so the
# distribution is nbkit-lm; the import name, the command and the magics stay `nbkit`.
DISTRIBUTION = "nbkit-lm"


def shown_path(path) -> str:
    """A path as nbkit prints it: relative to the working directory when it lies under it or under its parent
    (``../runs/x`` from a notebooks/ folder), so a saved notebook carries no absolute path of the machine that
    ran it; under ``~`` when in the home; else whole."""
    import os

    text = os.path.abspath(os.fspath(path))
    relative = os.path.relpath(text, os.getcwd())
    if not relative.startswith(os.pardir + os.sep + os.pardir):  # here, below, or one folder up
        return relative
    home = os.path.expanduser("~")
    if home not in ("/", "") and text.startswith(home.rstrip(os.sep) + os.sep):
        return os.path.join("~", os.path.relpath(text, home))
    return text


def install_extra(extra: str) -> str:
    """The pip command that adds one of nbkit's extras (``quant``, ``embed``, ``rl``, ...)."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


class NbkitError(Exception):
    """Base class of every error nbkit raises on purpose."""

    def _render_traceback_(self):  # IPython's hook: one line, not a traceback
        return [f"{type(self).__name__}: {self}"]


class ConfigError(NbkitError, ValueError):
    """An option has a value that cannot work; raised before anything loads.

    Args:
        field: the option at fault (``lr``, ``r``, ``epochs``, …).
        message: what is wrong and how to fix it.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"`{field}` {message}")


class UnknownNameError(NbkitError, KeyError):
    """A model, data set, prompt, run or method name that does not exist."""

    def __init__(self, kind: str, name: str, available, hint: str = ""):
        self.kind, self.name, self.available = kind, name, sorted(available)
        listing = ", ".join(self.available) or "none yet"
        message = f"unknown {kind} {name!r}; available: {listing}"
        super().__init__(message + (f". {hint}" if hint else ""))

    def __str__(self):  # KeyError would quote the message
        return self.args[0]


class DataError(NbkitError, ValueError):
    """Data that cannot be read or does not fit the prompt."""


class TemplateError(NbkitError, ValueError):
    """A prompt template that does not parse or does not fit the data.

    Args:
        message: what is wrong.
        variable: the undefined variable, when that is the problem.
        line: the template line of a syntax error.
    """

    def __init__(self, message: str, variable: str | None = None, line: int | None = None):
        self.variable, self.line = variable, line
        super().__init__(message)


class RunExistsError(NbkitError, FileExistsError):
    """A run directory exists and the user did not ask to overwrite or resume it."""

    def __init__(self, path):
        self.path = path
        super().__init__(
            f"run directory {str(path)!r} already exists; pass --overwrite to replace it, "
            "--resume to continue it, or another --name"
        )


class MissingDependencyError(NbkitError, ImportError):
    """An optional package is needed; the message says which pip install fixes it."""

    def __init__(self, package: str, purpose: str, install: str | None = None):
        self.package = package
        super().__init__(
            f"{purpose} needs the package `{package}`: {install or f'pip install {package}'}"
        )


class TrainingInterrupted(NbkitError):
    """Training stopped on a keyboard interrupt; the run is marked interrupted."""

    def __init__(self, run):
        self.run = run
        super().__init__(
            f"training interrupted at step {run.metrics.get('step', 0)}; run {run.name!r} is marked "
            f"interrupted in {shown_path(run.path)}"
        )


class TrainingFailed(NbkitError):
    """Training stopped on an error; the run is marked failed and keeps its log."""

    def __init__(self, run, reason: str):
        self.run, self.reason = run, reason
        super().__init__(f"training failed: {reason} (run {run.name!r} marked failed in {shown_path(run.path)})")
