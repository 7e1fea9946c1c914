"""What the benchmark scripts share: the machine line, child processes, tables, README blocks.

Every measurement runs in a child process of its own (``--one ...``), so its peak resident
memory is its own and nothing it imported or cached helps the next one. A child prints one
``RESULT {json}`` line; the parent collects them, takes medians and prints one table.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "NBKIT_PROGRESS": "plain"}


def machine() -> str:
    """CPU model, cores, and the torch build: what a number in a table was measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (``ru_maxrss`` is KiB on Linux)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)


def fill(args, quick: bool, **defaults: tuple) -> None:
    """Set each argument the command line left out (None) to its (full, quick) default."""
    for name, (full, short) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, short if quick else full)


def child(script: str, args: list[str], env: dict | None = None, timeout: float = 1800) -> dict:
    """Run ``script --one ARGS`` in a fresh interpreter and return its RESULT dict.

    ``wall_seconds`` (the whole process: imports, model load, work) is added by the parent.
    A failing child raises ``RuntimeError`` with the end of its stderr.
    """
    before = _cpu_seconds()
    started = time.monotonic()
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **ENV, **(env or {})}, cwd=ROOT)
    found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not found:
        raise RuntimeError(f"{' '.join(args)} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(found[-1][len("RESULT "):])
    result["wall_seconds"] = time.monotonic() - started
    result["others_cpu"] = _others_share(before, _cpu_seconds(), result["wall_seconds"])
    return result


def _cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process's finished children)."""
    import resource

    import psutil

    t = psutil.cpu_times()
    busy = sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, children.ru_utime + children.ru_stime


def _others_share(before, after, wall: float) -> float:
    """The share of the machine's cores that other processes used while a child ran (0 = it had them all).

    Another CPU-heavy process on the same cores slows a measurement several-fold; the scripts
    record this for every run, prefer the quiet ones and say when none was quiet.
    """
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, others / max(wall * (os.cpu_count() or 1), 1e-9))


QUIET = 0.15  # runs where other processes took more than this share of the cores count as disturbed


def quiet(runs: list[dict]) -> tuple[list[dict], bool]:
    """The undisturbed runs when there are any (and True), else all of them (and False)."""
    calm = [r for r in runs if r.get("others_cpu", 0.0) <= QUIET]
    return (calm, True) if calm else (runs, False)


def emit(result: dict) -> None:
    """What a child prints for its parent."""
    print("RESULT " + json.dumps(result), flush=True)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def substitute_block(source: str, marker: str, text: str) -> str | None:
    """``source`` with ``text`` between ``<!-- marker -->`` and ``<!-- /marker -->``; None without that block."""
    pattern = re.compile(rf"(<!-- {marker} -->\n).*?(<!-- /{marker} -->)", re.S)
    if not pattern.search(source):
        return None
    return pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(2), source)


def replace_block(path: Path, marker: str, text: str) -> None:
    """Replace what lies between ``<!-- marker -->`` and ``<!-- /marker -->`` in ``path``."""
    replaced = substitute_block(path.read_text(), marker, text)
    if replaced is None:
        raise SystemExit(f"{path} has no <!-- {marker} --> block")
    path.write_text(replaced)


def save(name: str, payload) -> None:
    """Raw numbers of the last full run, beside the tables: ``bench/results/<name>.json``."""
    folder = ROOT / "bench" / "results"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")


def publish(text: str, quick: bool, write: bool, block: str, name: str | None = None, payload=None) -> None:
    """Print a script's table; with ``write`` (and not a quick check) put it into bench/README.md's ``block`` and
    save its raw numbers as ``bench/results/<name>.json``. A run without ``write`` (a quick check, a subset, a
    data set of one's own) writes nothing: the raw numbers stay those of the table shown."""
    print(text)
    if quick or not write:
        return
    if name is not None:
        save(name, payload)
    replace_block(ROOT / "bench" / "README.md", block, text)


def caption(quick: bool, text: str) -> str:
    """The paragraph under a table: what was measured (``text``; marked when it was only a quick check),
    when, on what, and the command that reruns this script with the same arguments."""
    what = "quick check, not a result: " if quick else ""
    command = " ".join([f".venv/bin/python bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    return f"\n\n{what}{text} {stamp(command)}"


def stamp(command: str) -> str:
    """The line under a table: when, on what, and how to rerun it."""
    return f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine()}. Rerun: `{command}`."


def model_dir() -> str:
    """The plain Hugging Face directory of the embedded model (safetensors), converted once by nbkit.

    Baselines load these same weights with ``AutoModelForCausalLM.from_pretrained``.
    """
    from nbkit.models import embedded_path

    return str(embedded_path("smollm2-135m"))
