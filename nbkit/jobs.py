"""Notebooks as jobs: execute one with papermill and collect what nbkit saved.

A job gets its own folder; ``%evaluate`` writes its reports there
(``$NBKIT_JOB_DIR/reports``) and ``%tune`` its runs (``$NBKIT_RUNS_DIR``), so
results are read from files, never scraped from printed output. :func:`sweep`
runs a notebook over a grid of parameters and collects every job into one table.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .errors import ConfigError, NbkitError, shown_path


class JobFailed(NbkitError):
    """A notebook job stopped on an error in one of its cells."""

    def __init__(self, job: "NotebookJob", cell_index: int | None, ename: str, evalue: str):
        self.job, self.cell_index, self.ename, self.evalue = job, cell_index, ename, evalue
        where = f"cell {cell_index}" if cell_index is not None else "the kernel"
        super().__init__(self.describe(where))

    def describe(self, where: str) -> str:
        return f"{self.job.notebook.name} failed in {where}: {self.ename}: {self.evalue} (output: {self.job.output})"


class JobInterrupted(JobFailed):
    """The user pressed Ctrl-C during ``nbkit run``: the running cell was interrupted and the job stopped."""

    def describe(self, where: str) -> str:
        where = where if self.cell_index is not None else "between two cells"
        return (f"{self.job.notebook.name} interrupted by the user (Ctrl-C) in {where}; the executed notebook so "
                f"far: {shown_path(self.job.output)}")


@dataclass
class NotebookJob:
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
    """The parameters a notebook's ``parameters`` cell defines; a file that is not a notebook is an error."""
    import nbformat
    import papermill

    if notebook.suffix != ".ipynb":
        raise NbkitError(f"{str(notebook)!r} is not a notebook (.ipynb); nbkit run executes notebooks")
    try:
        nbformat.validate(nbformat.read(str(notebook), as_version=4))
    except Exception as e:  # bad JSON, or JSON that is not a notebook
        reason = str(e).splitlines()[0][:200]
        raise NbkitError(f"{str(notebook)!r} is not a readable notebook: {type(e).__name__}: {reason}") from None
    return papermill.inspect_notebook(str(notebook))


def check_parameters(notebook: str | os.PathLike, names) -> dict:
    """Fail unless ``notebook`` exists and has a parameter for each of ``names``.

    Args:
        notebook: the ``.ipynb``.
        names: the parameter names about to be set.

    Returns:
        The notebook's parameters, as :func:`papermill.inspect_notebook` describes them.

    Raises:
        ConfigError: a name the notebook's ``parameters`` cell does not define; the message lists those it does.
    """
    notebook = Path(notebook)
    if not notebook.exists():
        raise NbkitError(f"notebook {str(notebook)!r} not found")
    known = notebook_parameters(notebook)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ConfigError(unknown[0], f"is not a parameter of {notebook.name}; it has: {', '.join(known) or 'none'}")
    return known


def _new_folder(parent: Path, name: str) -> Path:
    """``parent/name``, or ``name-2``, ``name-3``…: mkdir claims it, so concurrent jobs never share one."""
    folder, n = parent / name, 1
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            n += 1
            folder = parent / f"{name}-{n}"


def run_notebook(notebook: str | os.PathLike, parameters: Mapping[str, Any] | None = None,
                 jobs_dir: str | os.PathLike = "jobs", kernel: str | None = None, name: str | None = None,
                 show: bool = False) -> NotebookJob:
    """Execute ``notebook`` with papermill into a new job folder.

    Args:
        notebook: the ``.ipynb`` to run.
        parameters: values for its ``parameters`` cell; unknown names are an error.
        jobs_dir: where job folders are created.
        kernel: kernel name (default: the notebook's, falling back to this Python).
        name: the job folder's name (default ``<notebook>-<time>``; ``-2``… is added if it is taken).
        show: print each cell as it starts and the cells' printed lines as they come (``nbkit run``).

    Returns:
        The finished :class:`NotebookJob`.

    Raises:
        JobFailed: a cell raised; the executed notebook is kept in the job folder.
        JobInterrupted: Ctrl-C, passed on to the kernel as Jupyter's interrupt (see :mod:`.jobwatch`).
    """
    import papermill

    from .jobwatch import Watch

    notebook = Path(notebook)
    parameters = dict(parameters or {})
    check_parameters(notebook, parameters)
    folder = _new_folder(Path(jobs_dir), name or f"{notebook.stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    job = NotebookJob(notebook.resolve(), folder.resolve(), parameters)
    env = {"NBKIT_JOB_DIR": str(job.folder), "NBKIT_RUNS_DIR": str(job.folder / "runs"), "NBKIT_PROGRESS": "plain"}
    saved = {k: os.environ.get(k) for k in env}
    # The kernel inherits them: papermill gives no way to pass a kernel its env (and its cwd is an
    # os.chdir), so this process runs one job at a time; sweep(parallel=N) uses child processes.
    os.environ.update(env)
    started, watch = time.monotonic(), Watch(show)
    try:
        for attempt in range(1, KERNEL_STARTS + 1):
            try:
                with watch.interruptible():
                    papermill.execute_notebook(
                        str(job.notebook), str(job.output), parameters=parameters, cwd=str(job.notebook.parent),
                        kernel_name=kernel, progress_bar=False, log_output=False, **watch.engine_options(),
                    )
                break
            except RuntimeError as e:
                if attempt == KERNEL_STARTS or watch.interrupted or not _kernel_never_started(e):
                    raise
    except papermill.PapermillExecutionError as e:
        raise (JobInterrupted if watch.interrupted else JobFailed)(job, e.exec_count, e.ename, e.evalue) from None
    except Exception as e:  # a dead kernel, a timeout: failed, not hanging
        failed = JobInterrupted if watch.interrupted else JobFailed
        raise failed(job, None, type(e).__name__, str(e)) from None
    finally:
        job.seconds = time.monotonic() - started
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return job


KERNEL_STARTS = 3  # tries to start a job's kernel (see _kernel_never_started)


def _kernel_never_started(error: Exception) -> bool:
    """Whether the kernel died before it answered its first request, so no cell ran and the job can start over.

    Jupyter picks a kernel's ports by binding and releasing them; kernels started at the same moment
    (``sweep(parallel=N)``) can pick the same port, and the one that loses dies at once
    (``ZMQError: Address already in use``), which ``jupyter_client`` reports as this error.
    """
    return "before replying to kernel_info" in str(error)


@dataclass
class Sweep:
    """A notebook run over a grid of parameters: one row per job, saved as ``sweep.csv`` and ``sweep.json``.

    ``frame`` (index ``job``, from 1) has a column per parameter, then ``status`` (ok/failed),
    ``seconds``, the metrics the job's ``%evaluate`` calls saved (``<target>/<metric>``, or
    ``<metric>`` when each job evaluated one target), ``cell`` and ``error`` (failed jobs:
    the ``In [n]`` count of the cell that raised, and ``ename: evalue``) and ``folder``.
    """

    notebook: Path
    path: Path
    frame: Any  # pandas.DataFrame
    parameters: list[str]
    metrics: list[str]

    @property
    def ok(self) -> bool:
        return bool((self.frame["status"] == "ok").all())

    def to_text(self, width: int = 60) -> str:
        """The table as plain text: metrics to 3 decimals, folders by name, errors cut at ``width``."""
        import pandas as pd

        f = self.frame
        text = pd.DataFrame({p: f[p].map(_short) for p in self.parameters}, index=f.index)
        text["status"] = f["status"]
        text["seconds"] = f["seconds"].map(lambda v: f"{v:.1f}")
        for m in self.metrics:
            text[m] = f[m].map(lambda v: "" if _missing(v) else f"{v:.3f}" if isinstance(v, float) else str(v))
        if not self.ok:
            text["cell"] = f["cell"].map(lambda v: "" if _missing(v) else str(int(v)))
            text["error"] = f["error"].map(lambda v: "" if _missing(v) else _short(v, width))
        text["folder"] = f["folder"].map(lambda v: Path(v).name)
        return text.to_string()

    def __repr__(self):
        return f"nbkit Sweep of {self.notebook.name}, {len(self.frame)} jobs, in {self.path}\n{self.to_text()}"

    def _repr_html_(self):
        import html

        caption = (f"<b>Sweep of {html.escape(self.notebook.name)}</b>, {len(self.frame)} jobs, "
                   f"in <code>{html.escape(str(self.path))}</code>")
        return f"<div class='nbkit-sweep'>{caption}{self.frame.to_html(na_rep='')}</div>"


def _missing(value) -> bool:
    import pandas as pd

    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def _short(value, width: int = 24) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _attempt(notebook: Path, parameters: dict, jobs_dir: Path, name: str, kernel: str | None) -> dict:
    """Run one job and say how it went, as plain data a child process can send back."""
    try:
        job = run_notebook(notebook, parameters, jobs_dir=jobs_dir, kernel=kernel, name=name)
        return {"folder": str(job.folder), "seconds": job.seconds, "cell": None, "error": None}
    except JobFailed as e:
        return {"folder": str(e.job.folder), "seconds": e.job.seconds, "cell": e.cell_index,
                "error": f"{e.ename}: {e.evalue}"}


def _metrics(reports: list[dict]) -> dict[str, dict[str, Any]]:
    """{target: {metric: value}} over a job's reports; a target evaluated twice keeps its last result."""
    found: dict[str, dict[str, Any]] = {}
    for report in reports:
        names = report.get("info", {}).get("metrics")
        for target, row in report.get("results", {}).items():
            found.setdefault(target, {}).update({m: v for m, v in row.items() if (m in names if names else m != "n")})
    return found


def _frame(notebook: Path, names: list[str], combos: list[tuple], outcomes: list[dict]):
    import pandas as pd

    found = [_metrics(NotebookJob(notebook, Path(o["folder"])).reports()) for o in outcomes]
    one_target = all(len(m) <= 1 for m in found)  # then columns are just the metric names
    targets = {t for m in found for t in m}
    rows, metrics = [], []
    for combo, outcome, by_target in zip(combos, outcomes, found):
        row = dict(zip(names, combo))
        row.update(status="failed" if outcome["error"] else "ok", seconds=round(outcome["seconds"], 2))
        if one_target and len(targets) > 1:
            row["target"] = next(iter(by_target), None)
        for target, values in by_target.items():
            for metric, value in values.items():
                column = metric if one_target else f"{target}/{metric}"
                metrics += [column] if column not in metrics else []
                row[column] = value
        rows.append(row | {"cell": outcome["cell"], "error": outcome["error"], "folder": outcome["folder"]})
    if one_target and len(targets) > 1:
        metrics.insert(0, "target")
    frame = pd.DataFrame(rows, columns=[*names, "status", "seconds", *metrics, "cell", "error", "folder"],
                         index=pd.RangeIndex(1, len(rows) + 1, name="job"))
    frame["cell"] = frame["cell"].astype("Int64")  # a count, not 3.0; empty for the jobs that passed
    return frame, metrics


def sweep(notebook: str | os.PathLike, grid: Mapping[str, Sequence[Any]], jobs_dir: str | os.PathLike = "jobs",
          parallel: int = 1, kernel: str | None = None, on_job: Callable[[dict], None] | None = None) -> Sweep:
    """Run ``notebook`` once per combination of ``grid`` and collect the jobs into one table.

    Every name is checked against the notebook's parameters before any job starts. A job that
    fails is a ``failed`` row with its cell and error; the others still run.

    Args:
        notebook: the ``.ipynb`` to run.
        grid: values per parameter, ``{"lr": [1e-4, 3e-4], "method": ["lora", "qlora"]}``; the jobs are
            their Cartesian product, in that order (the last name varies fastest). A single value
            that is not a list or tuple counts as a list of one.
        jobs_dir: where the sweep folder ``<notebook>-sweep-<time>/`` is created; it holds a folder
            per job (``job-01``…), ``sweep.csv`` and ``sweep.json``.
        parallel: jobs run at once. Above 1 each job runs in a child process, since a job sets
            environment variables for its kernel.
        kernel: kernel name (default: the notebook's, falling back to this Python).
        on_job: called with each finished job's row (a dict: ``job``, the parameters, ``status``,
            ``seconds``, ``cell``, ``error``, ``folder``), in the order they finish.

    Returns:
        The :class:`Sweep`, with ``frame`` (a DataFrame, a row per job in grid order) and ``path``.

    Raises:
        ConfigError: an unknown parameter, a parameter without values, or ``parallel`` below 1.
    """
    notebook = Path(notebook)
    grid = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in grid.items()}
    check_parameters(notebook, grid)
    for name, values in grid.items():
        if not values:
            raise ConfigError(name, "has no values; give it at least one")
    if parallel < 1:
        raise ConfigError("parallel", f"must be a positive integer, got {parallel}")
    names, combos = list(grid), list(itertools.product(*grid.values()))
    path = _new_folder(Path(jobs_dir), f"{notebook.stem}-sweep-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    jobs = [(notebook, dict(zip(names, c)), path, f"job-{i:02d}", kernel) for i, c in enumerate(combos, 1)]
    outcomes: list[dict] = [{}] * len(jobs)

    def finished(i: int, outcome: dict):
        outcomes[i] = outcome
        if on_job:
            on_job({"job": i + 1, **jobs[i][1], "status": "failed" if outcome["error"] else "ok", **outcome})

    if parallel == 1:
        for i, job in enumerate(jobs):
            finished(i, _attempt(*job))
    else:
        _in_children(jobs, parallel, finished)
    frame, metrics = _frame(notebook, names, combos, outcomes)
    result = Sweep(notebook.resolve(), path, frame, names, metrics)
    _save_sweep(result, grid)
    return result


def _in_children(jobs: list[tuple], parallel: int, finished: Callable[[int, dict], None]) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: the parent may be a Jupyter kernel with threads and open sockets
    with ProcessPoolExecutor(min(parallel, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_attempt, *job): i for i, job in enumerate(jobs)}
        try:
            for future in as_completed(futures):
                finished(futures[future], future.result())
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def _save_sweep(result: Sweep, grid: dict) -> None:
    frame = result.frame
    frame.to_csv(result.path / "sweep.csv")
    records = frame.reset_index().astype(object).where(frame.reset_index().notna(), None).to_dict(orient="records")
    document = {"notebook": str(result.notebook), "grid": grid, "parameters": result.parameters,
                "metrics": result.metrics, "jobs": records}
    (result.path / "sweep.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
