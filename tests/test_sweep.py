"""nbkit sweep: a notebook over a grid of parameters, one table read from what each job saved.

The notebooks here load no model: a parameters cell, a cell that fails for one value, and a cell
that saves a report through the helper %evaluate uses, so each job costs one kernel start.
"""

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from nbkit.errors import ConfigError
from nbkit.jobs import sweep

GRID = {"lr": [1e-4, 3e-4], "method": ["lora", "bad"]}
REPORT = """\
import pandas as pd
from nbkit.results import keep_report
from nbkit.results import Report

frame = pd.DataFrame({"accuracy": [lr * 1000], "f1": [len(method) / 10], "n": [8]},
                     index=pd.Index(["intent"], name="target"))
keep_report(Report(frame, {}, {"data": "sample:intent", "split": "test", "rows": 8, "metrics": ["accuracy", "f1"]}), [])
"""


def _notebook(folder: Path) -> Path:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("lr = 1e-4\nmethod = 'lora'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("if method == 'bad':\n    raise ValueError(f'no method {method!r}')"),
        nbformat.v4.new_code_cell(REPORT),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path = folder / "toy.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return _notebook(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def swept(toy, tmp_path_factory):
    """Four jobs in grid order; the second (method='bad') fails in the middle."""
    rows = []
    result = sweep(toy, GRID, jobs_dir=tmp_path_factory.mktemp("jobs"), on_job=rows.append)
    return result, rows


def test_grid_product_and_table(swept):
    result, _ = swept
    f = result.frame
    assert list(f.index) == [1, 2, 3, 4]
    assert list(zip(f["lr"], f["method"])) == [(1e-4, "lora"), (1e-4, "bad"), (3e-4, "lora"), (3e-4, "bad")]
    assert list(f.columns) == ["lr", "method", "status", "seconds", "accuracy", "f1", "cell", "error", "folder"]
    assert result.metrics == ["accuracy", "f1"]  # one target per job: plain metric names, and no `n`
    ok = f[f["status"] == "ok"]
    assert ok["accuracy"].tolist() == pytest.approx([0.1, 0.3]) and ok["f1"].tolist() == pytest.approx([0.4, 0.4])
    assert (f["seconds"] > 0).all()
    assert [Path(p).name for p in f["folder"]] == ["job-01", "job-02", "job-03", "job-04"]
    assert all(Path(p).parent == result.path for p in f["folder"])
    assert all((Path(p) / "toy.ipynb").exists() for p in f["folder"])
    assert result.path.name.startswith("toy-sweep-")


def test_a_failing_job_is_a_row_and_the_others_run(swept):
    result, rows = swept
    f = result.frame
    assert f["status"].tolist() == ["ok", "failed", "ok", "failed"] and not result.ok
    failed = f.loc[2]
    assert failed["error"] == "ValueError: no method 'bad'"
    assert failed["cell"] == 3  # In [3]: the parameters, papermill's injected cell, then this one
    assert pd.isna(failed["accuracy"]) and pd.isna(f.loc[1, "cell"]) and pd.isna(f.loc[1, "error"])
    assert [r["job"] for r in rows] == [1, 2, 3, 4] and rows[1]["status"] == "failed"
    assert "ValueError: no method 'bad'" in result.to_text()


def test_the_table_is_saved_as_csv_and_json(swept):
    result, _ = swept
    csv = pd.read_csv(result.path / "sweep.csv", index_col="job")
    assert csv["status"].tolist() == ["ok", "failed", "ok", "failed"]
    assert csv["accuracy"].tolist()[::2] == pytest.approx([0.1, 0.3])
    saved = json.loads((result.path / "sweep.json").read_text())
    assert saved["grid"] == GRID and saved["metrics"] == ["accuracy", "f1"]
    assert [j["method"] for j in saved["jobs"]] == ["lora", "bad", "lora", "bad"]
    assert saved["jobs"][1]["cell"] == 3 and saved["jobs"][0]["error"] is None  # null, not NaN


def test_unknown_parameter_fails_before_any_job(toy, tmp_path):
    with pytest.raises(ConfigError) as e:
        sweep(toy, {"lr": [1e-4], "methd": ["lora"]}, jobs_dir=tmp_path / "jobs")
    assert e.value.field == "methd" and "lr, method" in str(e.value)
    assert not (tmp_path / "jobs").exists()


def test_cli_parallel_prints_the_same_table_and_where_it_is(swept, toy, tmp_path, capsys):
    from nbkit.cli import main

    code = main(["sweep", str(toy), "-p", "lr", "1e-4", "3e-4", "-p", "method", "lora", "bad",
                 "--parallel", "2", "--jobs-dir", str(tmp_path / "jobs")])
    out = capsys.readouterr().out
    assert code == 1  # a job failed
    folder = next((tmp_path / "jobs").iterdir())
    assert f"{folder / 'sweep.csv'}" in out and "sweep.json" in out
    assert "ValueError: no method 'bad'" in out and "job-04" in out
    parallel = pd.read_csv(folder / "sweep.csv", index_col="job")
    sequential = pd.read_csv(swept[0].path / "sweep.csv", index_col="job")
    same = ["lr", "method", "status", "accuracy", "f1", "cell", "error"]
    pd.testing.assert_frame_equal(parallel[same], sequential[same])
    assert [Path(p).name for p in parallel["folder"]] == ["job-01", "job-02", "job-03", "job-04"]


def test_cli_exits_0_when_every_job_passes(toy, tmp_path, capsys):
    from nbkit.cli import main

    assert main(["sweep", str(toy), "-p", "method", "lora", "--jobs-dir", str(tmp_path / "jobs")]) == 0
    out = capsys.readouterr().out
    assert "[1/1] method='lora': ok" in out and "error" not in out


def test_cli_unknown_parameter_names_the_notebooks(toy, tmp_path, capsys):
    from nbkit.cli import main

    assert main(["sweep", str(toy), "-p", "methd", "lora", "--jobs-dir", str(tmp_path / "jobs")]) == 1
    captured = capsys.readouterr()
    assert "`methd` is not a parameter of toy.ipynb; it has: lr, method" in captured.err
    assert "sweeping" not in captured.out and not (tmp_path / "jobs").exists()


def _job_with_reports(folder: Path, *targets: list[str]) -> dict:
    from nbkit.results import Report

    for k, names in enumerate(targets):
        frame = pd.DataFrame({"accuracy": [0.5 + i / 10 for i in range(len(names))], "n": [8] * len(names)},
                             index=pd.Index(names, name="target"))
        Report(frame, {}, {"metrics": ["accuracy"]}).save(folder / "reports", name=f"report-{k}")
    return {"folder": str(folder), "seconds": 1.0, "cell": None, "error": None}


def test_metrics_of_several_targets_are_target_slash_metric(tmp_path):
    from nbkit.jobs import _frame

    # before/after, as the quickstart does: a target evaluated twice keeps its last result
    outcome = _job_with_reports(tmp_path / "a", ["intent"], ["base", "intent + run"])
    frame, metrics = _frame(tmp_path / "nb.ipynb", ["lr"], [(1e-4,)], [outcome])
    assert metrics == ["intent/accuracy", "base/accuracy", "intent + run/accuracy"]
    assert frame.loc[1, metrics].tolist() == pytest.approx([0.5, 0.5, 0.6])


def test_one_target_per_job_under_different_names_keeps_the_name(tmp_path):
    from nbkit.jobs import _frame

    outcomes = [_job_with_reports(tmp_path / "a", ["intent + lora"]),
                _job_with_reports(tmp_path / "b", ["intent + qlora"])]
    frame, metrics = _frame(tmp_path / "nb.ipynb", ["method"], [("lora",), ("qlora",)], outcomes)
    assert metrics == ["target", "accuracy"]
    assert frame["target"].tolist() == ["intent + lora", "intent + qlora"]


def test_a_kernel_that_dies_before_any_cell_is_started_again(toy, tmp_path, monkeypatch):
    """The sweep flake (two kernels bound the same port; the loser died before kernel_info): the job starts over.

    A real kernel spec whose first start exits at once, as a kernel that lost its port does; the second
    start is a normal ipykernel. (A cell that raises is papermill's execution error, which is never retried.)
    """
    import sys

    from nbkit.jobs import run_notebook

    starts = tmp_path / "starts"
    spec = tmp_path / "jupyter" / "kernels" / "dies-once"
    spec.mkdir(parents=True)
    launcher = tmp_path / "launch.py"
    launcher.write_text(
        "import pathlib, sys\n"
        f"starts = pathlib.Path({str(starts)!r})\n"
        "starts.write_text(starts.read_text() + 'x' if starts.exists() else 'x')\n"
        "if len(starts.read_text()) == 1:\n"
        "    sys.exit(1)\n"
        "from ipykernel import kernelapp\n"
        "kernelapp.launch_new_instance(argv=sys.argv[1:])\n")
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, str(launcher), "-f", "{connection_file}"],
        "display_name": "dies once", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))

    job = run_notebook(toy, {"lr": 2e-4}, jobs_dir=tmp_path / "jobs", kernel="dies-once")
    assert starts.read_text() == "xx"
    assert len(job.reports()) == 1
