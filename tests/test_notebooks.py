"""The documentation notebooks as tests: papermill jobs through `nbkit run`, and nbval."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "notebooks" / "00_quickstart.ipynb"

pytestmark = pytest.mark.slow


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("NBKIT_JOB_DIR",)}
    env.update(HF_HUB_OFFLINE="1", NBKIT_RUNS_DIR=str(tmp_path / "runs"), NBKIT_PROGRESS="plain")
    return env


def test_quickstart_runs_as_a_papermill_job_and_its_results_are_collected(tmp_path):
    nbkit = Path(sys.executable).parent / "nbkit"
    proc = subprocess.run(
        [str(nbkit), "run", str(QUICKSTART), "-p", "epochs", "0.25", "-p", "limit", "16",
         "--jobs-dir", str(tmp_path / "jobs")],
        capture_output=True, text=True, env=_env(tmp_path), timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = next((tmp_path / "jobs").iterdir())
    assert (job / "00_quickstart.ipynb").exists() and f"executed notebook: {job}" in proc.stdout
    reports = [json.loads(p.read_text()) for p in sorted((job / "reports").glob("*.json"))]
    assert [list(r["results"]) for r in reports] == [["intent"], ["intent", "intent + quickstart"]]
    assert all(r["info"]["rows"] == 16 for r in reports)
    assert "intent + quickstart" in proc.stdout  # the before/after table is printed
    assert (job / "runs" / "quickstart" / "adapter" / "adapter_config.json").exists()
    import nbformat

    executed = nbformat.read(job / "00_quickstart.ipynb", as_version=4)
    tune_cell = next(c for c in executed.cells if c.source.startswith("%tune"))
    text = "".join(o.get("text", "") for o in tune_cell["outputs"] if o["output_type"] == "stream")
    assert 2 <= len(text.splitlines()) <= 8 and "tune completed" in text  # a few plain lines, no bar


def test_unknown_parameter_lists_the_notebooks_parameters(tmp_path):
    from nbkit.cli import main

    assert main(["run", str(QUICKSTART), "-p", "epoch", "1", "--jobs-dir", str(tmp_path)]) == 1


def test_unknown_parameter_message(tmp_path, capsys):
    from nbkit.cli import main

    main(["run", str(QUICKSTART), "-p", "epoch", "1", "--jobs-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert "`epoch` is not a parameter" in err and "epochs" in err and "method" in err


def test_failing_job_reports_cell_and_error(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("%load_ext nbkit"),
        nbformat.v4.new_code_cell("%evaluate --prompt missing --data sample:intent"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path = tmp_path / "bad.ipynb"
    nbformat.write(nb, path)
    from nbkit.jobs import JobFailed, run_notebook

    with pytest.raises(JobFailed) as e:
        run_notebook(path, jobs_dir=tmp_path / "jobs")
    assert e.value.ename == "UnknownNameError" and "missing" in e.value.evalue
    assert e.value.job.output.exists()


@pytest.mark.parametrize("notebook", sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")))
def test_notebook_passes_nbval(notebook, tmp_path):
    """Strict output comparison; notebooks/sanitize.cfg masks only what legitimately varies."""
    env = {k: v for k, v in _env(tmp_path).items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["NBKIT_API_CACHE"] = str(tmp_path / "api-cache")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", notebook,
         "--nbval-sanitize-with", str(ROOT / "notebooks" / "sanitize.cfg"), "--nbval-cell-timeout", "900"],
        capture_output=True, text=True, env=env, cwd=ROOT / "notebooks", timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
