"""The ``nbkit`` command: ``nbkit run NOTEBOOK -p key value …``, ``nbkit sweep NOTEBOOK -p key v1 v2 …``,
``nbkit tune --config job.yaml``, ``nbkit export RUN --merge`` and ``nbkit serve [--run RUN …]``."""

from __future__ import annotations

import argparse
import sys

from .errors import NbkitError


def _run(args) -> int:
    from .errors import shown_path
    from .jobs import JobInterrupted, check_parameters, parse_value, run_notebook

    if args.list:
        return _list_parameters(args.notebook)
    parameters = {k: parse_value(v) for k, v in args.parameter}
    check_parameters(args.notebook, parameters)  # a wrong file or parameter is said before "running"
    print(f"nbkit: running {args.notebook} {' '.join(f'{k}={v!r}' for k, v in parameters.items())}", flush=True)
    try:
        job = run_notebook(args.notebook, parameters, jobs_dir=args.jobs_dir, kernel=args.kernel, show=not args.quiet)
    except JobInterrupted as e:
        print(f"nbkit: stopped: {e}", file=sys.stderr)
        return 130  # what a shell reports for a command stopped by Ctrl-C
    print(f"nbkit: done in {job.seconds:.0f}s; executed notebook: {shown_path(job.output)}")
    reports = job.reports()
    for number, report in enumerate(reports, 1):
        info = report["info"]
        print(f"\nevaluation {number} of {len(reports)}: {_compared(list(report['results']))}, on {info['data']} "
              f"[{info['split']}], {info['rows']} rows, {info['scoring']}:")
        print(_table(report["results"], info["metrics"]))
    folders = [f"{what} in {shown_path(job.folder / what)}" for what in ("runs", "reports") if (job.folder / what).is_dir()]
    if folders:
        print(f"\nnbkit: {' and '.join(folders)}")
    return 0


def _compared(targets: list[str]) -> str:
    """What a report's table holds, in words: a prompt before tuning, or prompts beside tuned runs."""
    tuned = [t for t in targets if " + " in t]
    if not tuned:
        return "before tuning (" + ", ".join(targets) + ")"
    before = [t for t in targets if " + " not in t]
    return ("before and after tuning (" if before else "after tuning (") + ", ".join(targets) + ")"


def _list_parameters(notebook: str) -> int:
    """What ``-p`` can set: the notebook's parameters cell, one line each (name, default, its comment)."""
    from .jobs import check_parameters

    known = check_parameters(notebook, [])
    if not known:
        print(f"{notebook} has no parameters cell (a code cell tagged `parameters`)")
        return 0
    width = max(len(name) for name in known)
    print(f"parameters of {notebook} (set with -p NAME VALUE):")
    for name, p in known.items():
        help_ = f"  # {p['help']}" if p.get("help") else ""
        print(f"  {name.ljust(width)} = {p.get('default')}{help_}")
    return 0


def _sweep(args) -> int:
    import math

    from .errors import ConfigError
    from .jobs import check_parameters, parse_value, sweep

    grid = {}
    for name, *values in args.parameter:
        if name in grid:
            raise ConfigError(name, "is given twice; list all its values after one -p")
        if not values:
            raise ConfigError(name, "has no values; give them after the name: -p lr 1e-4 3e-4")
        grid[name] = [parse_value(v) for v in values]
    check_parameters(args.notebook, grid)  # before saying how many jobs there will be
    total = math.prod(len(v) for v in grid.values())
    print(f"nbkit: sweeping {args.notebook} over {total} jobs"
          + (f", {args.parallel} at a time" if args.parallel > 1 else ""), flush=True)

    def finished(row):
        values = " ".join(f"{k}={row[k]!r}" for k in grid)
        where = f" in cell {row['cell']}" if row["cell"] is not None else ""
        how = "ok" if row["status"] == "ok" else f"failed{where}: {row['error']}"
        print(f"nbkit: [{row['job']}/{total}] {values}: {how} ({row['seconds']:.0f}s)", flush=True)

    result = sweep(args.notebook, grid, jobs_dir=args.jobs_dir, parallel=args.parallel, kernel=args.kernel,
                   on_job=finished)
    print(f"\n{result.to_text()}\n")
    print(f"nbkit: table saved as {result.path / 'sweep.csv'} and sweep.json; job folders in {result.path}")
    failed = int((result.frame["status"] == "failed").sum())
    if failed:
        print(f"nbkit: {failed} of {total} jobs failed", file=sys.stderr)
    return 0 if result.ok else 1


def _tune(args) -> int:
    from .distributed import world
    from .jobfiles import read_job, tune_arguments
    from .training import tune

    overrides = list(args.set) + ([f"name={args.name}"] if args.name else [])
    prompt, data, settings = tune_arguments(read_job(args.config, overrides))
    run = tune(prompt, data, **settings, resume=args.resume, overwrite=args.overwrite)
    if world().main:
        m = run.metrics
        dev = {k: v for k, v in m.items() if k.startswith("dev_") and k != "dev_examples"}
        summary = [f"steps {m.get('steps')}", f"train loss {m.get('train_loss', float('nan')):.4f}",
                   f"{m.get('train_seconds', 0):.0f} s", f"{m.get('tokens_per_second', 0):.0f} tokens/s"]
        summary += [f"{k.replace('_', ' ')} {v:.4f}" for k, v in dev.items() if isinstance(v, float)]
        print(f"nbkit: run {run.name} {run.status}: {', '.join(summary)}\nnbkit: adapter in {run.adapter_path}")
    return 0


def _export(args) -> int:
    from .exports import export

    result = export(args.run, args.out or f"{args.run.rstrip('/').split('/')[-1]}-export", merge=args.merge,
                    overwrite=args.overwrite, format=args.format, gguf_type=args.gguf_type)
    print(f"nbkit: {result!r}")
    return 0


def _serve(args) -> int:
    import os

    from .serve import Limits, serve

    key = args.api_key or os.environ.get("NBKIT_SERVE_API_KEY") or None
    limits = Limits(max_tokens=args.max_tokens, max_request_bytes=args.max_request_kb * 1024, max_batch=args.max_batch,
                    default_max_tokens=min(args.default_max_tokens, args.max_tokens), timeout=args.timeout)
    serve(args.model, args.run, host=args.host, port=args.port, api_key=key, limits=limits)
    return 0


def _table(results: dict, metrics: list[str]) -> str:
    names = list(results)
    width = max([len("target")] + [len(n) for n in names])
    lines = ["  " + "target".ljust(width) + "".join(f"{m:>13}" for m in metrics)]
    for name in names:
        cells = "".join(f"{results[name].get(m, float('nan')):>13.3f}" for m in metrics)
        lines.append("  " + name.ljust(width) + cells)
    return "\n".join(lines)


def main(argv=None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(prog="nbkit", description="nbkit: notebooks and tune jobs, headless")
    parser.add_argument("--version", action="version", version=f"nbkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute a notebook with papermill into a job folder",
                         description="Execute NOTEBOOK with papermill into a job folder; `nbkit run NOTEBOOK --list` "
                                     "shows the parameters -p can set.")
    run.add_argument("notebook")
    run.add_argument("--list", action="store_true", help="list the notebook's parameters (names, defaults) and stop")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="set a parameter of the notebook's parameters cell (repeatable)")
    run.add_argument("--jobs-dir", default="jobs", help="where job folders go (default ./jobs)")
    run.add_argument("--kernel", help="kernel name (default: this Python)")
    run.add_argument("--quiet", action="store_true", help="print no line per cell and none of the cells' output")
    swp = sub.add_parser("sweep", help="run a notebook once per combination of parameter values; one table")
    swp.add_argument("notebook")
    swp.add_argument("-p", "--parameter", nargs="+", action="append", default=[], metavar=("NAME", "VALUE"),
                     help="a parameter and its values: -p lr 1e-4 3e-4 (repeatable; the jobs are the product)")
    swp.add_argument("--parallel", type=int, default=1, metavar="N", help="run up to N jobs at once (default 1)")
    swp.add_argument("--jobs-dir", default="jobs", help="where the sweep folder goes (default ./jobs)")
    swp.add_argument("--kernel", help="kernel name (default: this Python)")
    tune = sub.add_parser("tune", help="train a job file written by %%tune --export (also under torchrun)")
    tune.add_argument("--config", required=True, help="the job file (.yaml)")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a setting: lr=1e-4, options.r=16, epochs=1 (repeatable)")
    tune.add_argument("--name", help="run name (default: the job's, else <prompt>-<method>)")
    tune.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    tune.add_argument("--overwrite", action="store_true", help="replace an existing run of the same name")
    exp = sub.add_parser("export", help="write a run as a merged model (or its adapter) for other tools")
    exp.add_argument("run", help="run name or directory")
    exp.add_argument("--out", help="folder to write (default <run>-export)")
    exp.add_argument("--merge", action=argparse.BooleanOptionalAction, default=True,
                     help="fold the adapter into the base weights (default); --no-merge copies the adapter")
    exp.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    exp.add_argument("--format", default="hf", choices=["hf", "gguf"],
                     help="hf: a transformers model folder (default); gguf: one .gguf file and an Ollama Modelfile")
    exp.add_argument("--gguf-type", default="f16", choices=["f16", "q8_0", "f32", "bf16"],
                     help="the GGUF's weight type (default f16; q8_0 is about half the size)")
    srv = sub.add_parser("serve", help="serve the base model and tuned runs over the OpenAI API")
    srv.add_argument("--model", default="smollm2-135m", help="base model spec (default smollm2-135m)")
    srv.add_argument("--run", action="append", default=[], help="a run to serve under its name (repeatable)")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    srv.add_argument("--api-key", help="require this bearer token (or set NBKIT_SERVE_API_KEY, which keeps it "
                                       "out of the process list)")
    srv.add_argument("--max-tokens", type=int, default=512, help="the most tokens a request may generate (512)")
    srv.add_argument("--max-request-kb", type=int, default=1024, help="largest request body in KiB (1024)")
    srv.add_argument("--max-batch", type=int, default=8, help="greedy prompts answered in one batch (8)")
    srv.add_argument("--default-max-tokens", type=int, default=256,
                     help="what a chat request that sets no max_tokens gets (256; DSPy sets none)")
    srv.add_argument("--timeout", type=float, default=300,
                     help="seconds a request may take, queued and generating, before its answer ends (300)")
    args = parser.parse_args(argv)
    try:
        return {"run": _run, "sweep": _sweep, "tune": _tune, "export": _export, "serve": _serve}[args.command](args)
    except NbkitError as e:
        print(f"nbkit: error: {e}", file=sys.stderr)
        return 1
