"""Notebooks as jobs: execute one with papermill and collect what nbkit saved.

A job gets its own folder; ``%evaluate`` writes its reports there
(``$NBKIT_JOB_DIR/reports``) and ``%tune`` its runs (``$NBKIT_RUNS_DIR``), so
results are read from files, never scraped from printed output.
"""

from __future__ import annotations

import ast
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, NbkitError


class JobFailed(NbkitError):
    """A notebook job stopped on an error in one of its cells."""

    def __init__(self, job: "Job", cell_index: int | None, ename: str, evalue: str):
        self.job, self.cell_index, self.ename, self.evalue = job, cell_index, ename, evalue
        where = f"cell {cell_index}" if cell_index is not None else "the kernel"
        super().__init__(f"{job.notebook.name} failed in {where}: {ename}: {evalue} (output: {job.output})")


@dataclass
class Job:
    notebook: Path
    folder: Path
    parameters: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def output(self) -> Path:
        return self.folder / self.notebook.name

    def reports(self) -> list[dict]:
        """The reports the notebook's ``%evaluate`` calls saved, oldest first."""
        return [json.loads(p.read_text()) for p in sorted((self.folder / "reports").glob("*.json"))]


def parse_value(text: str) -> Any:
    """``-p key value``: a Python literal when it is one (3, 1e-4, None, [1, 2]), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def notebook_parameters(notebook: Path) -> dict:
    import papermill

    return papermill.inspect_notebook(str(notebook))


def run_notebook(notebook: str | os.PathLike, parameters: Mapping[str, Any] | None = None,
                 jobs_dir: str | os.PathLike = "jobs", kernel: str | None = None) -> Job:
    """Execute ``notebook`` with papermill into a new job folder.

    Args:
        notebook: the ``.ipynb`` to run.
        parameters: values for its ``parameters`` cell; unknown names are an error.
        jobs_dir: where job folders are created.
        kernel: kernel name (default: the notebook's, falling back to this Python).

    Returns:
        The finished :class:`Job`.

    Raises:
        JobFailed: a cell raised; the executed notebook is kept in the job folder.
    """
    import papermill

    notebook = Path(notebook)
    if not notebook.exists():
        raise NbkitError(f"notebook {str(notebook)!r} not found")
    parameters = dict(parameters or {})
    known = notebook_parameters(notebook)
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise ConfigError(unknown[0], f"is not a parameter of {notebook.name}; it has: {', '.join(known) or 'none'}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(jobs_dir) / f"{notebook.stem}-{stamp}"
    n = 1
    while folder.exists():
        n += 1
        folder = Path(jobs_dir) / f"{notebook.stem}-{stamp}-{n}"
    folder.mkdir(parents=True)
    job = Job(notebook.resolve(), folder.resolve(), parameters)
    env = {"NBKIT_JOB_DIR": str(job.folder), "NBKIT_RUNS_DIR": str(job.folder / "runs"), "NBKIT_PROGRESS": "plain"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits them
    started = time.monotonic()
    try:
        papermill.execute_notebook(
            str(job.notebook), str(job.output), parameters=parameters, cwd=str(job.notebook.parent),
            kernel_name=kernel, progress_bar=False, log_output=False,
        )
    except papermill.PapermillExecutionError as e:
        raise JobFailed(job, e.exec_count, e.ename, e.evalue) from None
    except Exception as e:  # a dead kernel, a timeout: failed, not hanging
        raise JobFailed(job, None, type(e).__name__, str(e)) from None
    finally:
        job.seconds = time.monotonic() - started
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return job
