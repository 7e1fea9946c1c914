"""A tune job headless, in one process and under torchrun with 2 CPU processes (gloo), for real.

The job splits each batch of 8 between the processes, so with dropout 0 the 2-process adapter
must equal the 1-process one to float tolerance: the gradients are the same sums, added in
another order (measured: max |difference| 3e-6 on weights up to 4e-2; the test allows 1e-4).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nbkit

pytestmark = pytest.mark.slow

STEPS = 6
TOLERANCE = 1e-4


def _adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The quickstart's LoRA as a job file (dropout 0: dropout masks are drawn per process), and a
    one-process headless run of it to compare with."""
    from nbkit.prompts import Prompt

    folder = tmp_path_factory.mktemp("distributed")
    prompt = Prompt(
        "Which team should handle this customer message? Answer refund, delivery, account or other.\n"
        "Message: {{ text }}\nTeam:",
        name="intent", target="{{ label }}", choices=["refund", "delivery", "account", "other"],
    )
    path = nbkit.tune(prompt, "sample:intent", export=folder / "job.yaml", max_steps=STEPS, save_every=2, dropout=0.0)
    env = {**os.environ, "NBKIT_RUNS_DIR": str(folder / "runs"), "HF_HUB_OFFLINE": "1"}
    single = _nbkit(["tune", "--config", str(path), "--name", "single"], env, folder)
    assert single.returncode == 0, single.stdout + single.stderr
    assert "nbkit: run single completed: steps 6" in single.stdout
    return path, env, folder


def _nbkit(args, env, cwd, processes: int = 1, **kwargs):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    cmd = (launcher + ["-m", "nbkit"] if processes > 1 else [sys.executable, "-m", "nbkit"]) + args
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900, **kwargs)


def test_two_processes_train_one_run_equal_to_one_process(job):
    path, env, folder = job
    done = _nbkit(["tune", "--config", str(path), "--name", "ddp"], env, folder, processes=2)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    runs = folder / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["ddp", "single"]  # one copy of the run
    lines = (runs / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, STEPS + 1))  # one writer
    assert done.stdout.count("tune ddp: lora") == 1  # one process reports
    assert "2 processes: 4 rows each per batch of 8" in done.stdout
    single, ddp = json.loads((runs / "single" / "metrics.jsonl").read_text().splitlines()[-1]), json.loads(lines[-1])
    assert ddp["tokens"] == single["tokens"]  # the same examples, split between the processes
    assert ddp["loss"] == pytest.approx(single["loss"], abs=1e-4)
    assert _max_difference(_adapter(runs / "ddp"), _adapter(runs / "single")) < TOLERANCE


def _rank_of(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    return dict(x.split("=", 1) for x in environ if "=" in x).get("RANK")


def test_a_crashed_process_fails_the_run_and_resume_finishes_it(job):
    path, env, folder = job
    run_dir = folder / "runs" / "cut"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "nbkit",
                "tune", "--config", str(path), "--name", "cut"]
    first = subprocess.Popen(launcher, env=env, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    try:
        started = time.monotonic()
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):  # past the checkpoint at 2
            assert first.poll() is None and time.monotonic() - started < 600, first.stdout.read()
            time.sleep(0.2)
        workers = subprocess.run(["pgrep", "-P", str(first.pid)], capture_output=True, text=True).stdout.split()
        second = [int(w) for w in workers if _rank_of(int(w)) == "1"]
        assert len(second) == 1, workers
        os.kill(second[0], signal.SIGKILL)  # a crash of the second process mid-run
        killed = time.monotonic()
        output, _ = first.communicate(timeout=120)  # the others do not hang
        assert first.returncode != 0 and time.monotonic() - killed < 120
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "SIGTERM" in status["error"] and "--resume" in status["error"], output
    assert not (run_dir / "adapter").exists() and (run_dir / "checkpoints" / "checkpoint-2").is_dir()

    resumed = _nbkit(["tune", "--config", str(path), "--name", "cut", "--resume"], env, folder, processes=2)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-3000:]
    assert "resuming at step 2" in resumed.stdout
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert _max_difference(_adapter(run_dir), _adapter(folder / "runs" / "single")) < TOLERANCE


def test_a_run_exports_the_job_that_made_it(job):
    path, env, folder = job
    from nbkit.jobfiles import job_from_run

    again = job_from_run(nbkit.Run(folder / "runs" / "single"), folder / "again.yaml")
    from nbkit.jobfiles import read_job

    assert read_job(again).settings == {**read_job(path).settings, "name": None}
