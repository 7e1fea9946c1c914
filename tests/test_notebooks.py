"""The documentation notebooks as tests: papermill jobs through `nbkit run`, and nbval."""

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


# `nbkit run` on the real quickstart, with its collected reports, is tested in the environment Binder
# builds (tests/test_binder.py), so CI runs that notebook as a job once.


def test_unknown_parameter_lists_the_notebooks_parameters(tmp_path):
    from nbkit.cli import main

    assert main(["run", str(QUICKSTART), "-p", "epoch", "1", "--jobs-dir", str(tmp_path)]) == 1


def test_unknown_parameter_message(tmp_path, capsys):
    from nbkit.cli import main

    main(["run", str(QUICKSTART), "-p", "epoch", "1", "--jobs-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert "`epoch` is not a parameter" in err and "epochs" in err and "method" in err


def test_run_lists_the_parameters_and_the_command_has_a_version(capsys):
    from nbkit import __version__
    from nbkit.cli import main

    assert main(["run", str(QUICKSTART), "--list"]) == 0
    out = capsys.readouterr().out
    assert "parameters of" in out and "-p NAME VALUE" in out
    assert "epochs = 2" in out and 'method = "lora"' in out  # the quickstart's own defaults
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"nbkit {__version__}"
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--list" in capsys.readouterr().out


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


def test_nbkit_run_shows_each_cell_and_ctrl_c_interrupts_the_training_cell_cleanly(tmp_path):
    """`nbkit run` prints each cell as it starts and the plain training lines; a real SIGINT, as a terminal's
    Ctrl-C sends it, stops the running %tune as Jupyter's interrupt does: the run is marked interrupted (not
    killed by SIGTERM), the exit status is 130 and no traceback reaches the terminal."""
    import json
    import signal
    import time

    import nbformat

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("steps = 400", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("%load_ext nbkit"),
        nbformat.v4.new_code_cell('%%prompt intent --target "{{ label }}"\nMessage: {{ text }}\nTeam:'),
        nbformat.v4.new_code_cell("%tune --prompt intent --data sample:intent --max-steps $steps --name ctrl-c"),
        nbformat.v4.new_code_cell("print('the cell after')"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, tmp_path / "long.ipynb")
    proc = subprocess.Popen([sys.executable, "-m", "nbkit", "run", "long.ipynb", "--jobs-dir", "jobs"], cwd=tmp_path,
                            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "tune ctrl-c:" not in seen:  # the %tune cell has started training
        line = proc.stdout.readline()
        assert line, seen + proc.stderr.read()
        seen += line
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    seen += out
    assert proc.returncode == 130, seen + err
    assert "nbkit: cell 2/5: %load_ext nbkit" in seen and "nbkit: cell 4/5: %tune --prompt intent" in seen
    assert "nbkit: cell 5/5" not in seen and "the cell after" not in seen  # the job stopped at the interrupted cell
    assert "interrupted by the user (Ctrl-C) in cell" in err and "Traceback" not in err + seen
    job = next((tmp_path / "jobs").iterdir())
    status = json.loads((job / "runs" / "ctrl-c" / "status.json").read_text())
    assert status["status"] == "interrupted", status


@pytest.fixture(scope="module")
def converted_models():
    """The embedded models in the cache before any notebook runs: the first load in a kernel converts SmolLM2 and
    says so on stderr, an output the saved notebooks (made with a warm cache) do not have."""
    from nbkit.models import embedded_path, encoder_path

    embedded_path("smollm2-135m")
    encoder_path("minilm-l6")


@pytest.mark.parametrize("notebook", sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")))
def test_notebook_passes_nbval(notebook, tmp_path, converted_models):
    """Strict output comparison; notebooks/sanitize.cfg masks only what legitimately varies."""
    env = {k: v for k, v in _env(tmp_path).items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["NBKIT_API_CACHE"] = str(tmp_path / "api-cache")
    env["NBKIT_PROGRESS"] = "widget"  # as `make notebooks` saved them: widget state and the static loss curve
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", notebook,
         "--nbval-sanitize-with", str(ROOT / "notebooks" / "sanitize.cfg"), "--nbval-cell-timeout", "900"],
        capture_output=True, text=True, env=env, cwd=ROOT / "notebooks", timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
