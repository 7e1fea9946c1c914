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


def child(script: str, args: list[str], env: dict | None = None, timeout: float = 1800) -> dict:
    """Run ``script --one ARGS`` in a fresh interpreter and return its RESULT dict.

    ``wall_seconds`` (the whole process: imports, model load, work) is added by the parent.
    A failing child raises ``RuntimeError`` with the end of its stderr.
    """
    started = time.monotonic()
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **ENV, **(env or {})}, cwd=ROOT)
    found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not found:
        raise RuntimeError(f"{' '.join(args)} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(found[-1][len("RESULT "):])
    result["wall_seconds"] = time.monotonic() - started
    return result


def emit(result: dict) -> None:
    """What a child prints for its parent."""
    print("RESULT " + json.dumps(result), flush=True)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def replace_block(path: Path, marker: str, text: str) -> None:
    """Replace what lies between ``<!-- marker -->`` and ``<!-- /marker -->`` in ``path``."""
    source = path.read_text()
    pattern = re.compile(rf"(<!-- {marker} -->\n).*?(<!-- /{marker} -->)", re.S)
    if not pattern.search(source):
        raise SystemExit(f"{path} has no <!-- {marker} --> block")
    path.write_text(pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(2), source))


def save(name: str, payload) -> None:
    """Raw numbers of the last full run, beside the tables: ``bench/results/<name>.json``."""
    folder = ROOT / "bench" / "results"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")


def stamp(command: str) -> str:
    """The line under a table: when, on what, and how to rerun it."""
    return f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine()}. Rerun: `{command}`."


def model_dir() -> str:
    """The plain Hugging Face directory of the embedded model (safetensors), converted once by nbkit.

    Baselines load these same weights with ``AutoModelForCausalLM.from_pretrained``.
    """
    from nbkit.models import embedded_path

    return str(embedded_path("smollm2-135m"))
