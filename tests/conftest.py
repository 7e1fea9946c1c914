"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) against the embedded model."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("NBKIT_PROGRESS", "plain")

from nbkit import events  # noqa: E402  (after the environment it reads)


_LEFT: dict[int, dict] = {}  # pid: what a test left running outside pytest's own process tree
_BEFORE: set[int] = set()  # the processes running when the session started


def pytest_sessionstart(session):
    import psutil

    _BEFORE.update(psutil.pids())


@pytest.fixture(autouse=True)
def _left_running(request):
    """Notes every process that appeared since the session started and is not pytest's own (a test's orphan, or
    other work on the machine), with the CPU time it goes on taking: on two cores a busy one slows every later test
    (a full run once had two notebooks 3-4x slower than alone). Listed at the end of the session."""
    yield
    import psutil

    me = psutil.Process()
    ours = {me.pid} | {p.pid for p in me.children(recursive=True)}
    for proc in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
        info = proc.info
        if info["pid"] in ours or info["pid"] in _BEFORE or not info["cpu_times"]:
            continue
        cpu = info["cpu_times"].user + info["cpu_times"].system
        command = " ".join(info["cmdline"] or [])[:160]
        seen = _LEFT.setdefault(info["pid"], {"test": request.node.nodeid, "cmd": command, "first": cpu})
        seen["later"] = cpu - seen["first"]


def pytest_terminal_summary(terminalreporter):
    busy = {pid: seen for pid, seen in _LEFT.items() if seen["later"] > 2}  # idle ones (a `sleep`) cost nothing
    if busy:
        terminalreporter.section("processes left running by tests (CPU seconds they took while later tests ran)")
        for pid, seen in sorted(busy.items(), key=lambda kv: -kv[1]["later"]):
            terminalreporter.write_line(f"{seen['later']:8.1f} s  pid {pid}  after {seen['test']}: {seen['cmd']}")


@pytest.fixture(autouse=True)
def _isolated_runs(tmp_path, monkeypatch):
    """Each test writes its runs under its own temporary folder."""
    monkeypatch.setenv("NBKIT_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("NBKIT_JOB_DIR", raising=False)
    from nbkit.session import current

    saved = dict(current().prompts)
    yield
    current().prompts.clear()
    current().prompts.update(saved)


@pytest.fixture
def smol():
    """The session's copy of the embedded SmolLM2 (converted to the cache once per machine). Per test, not per
    pytest session: training lets the session's copy go (two copies would not share the memory), and a test
    gets the one ``load_model`` gives now, from the cache in microseconds or reloaded from disk in a second."""
    from nbkit import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def ip():
    """A real IPython shell with the extension loaded (one per test session: IPython's is global)."""
    from IPython.testing import globalipapp

    globalipapp.start_ipython()
    shell = globalipapp.get_ipython()
    shell.run_line_magic("load_ext", "nbkit")
    return shell


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    """A 2-layer T5 with random weights and the MiniLM WordPiece tokenizer, saved like a checkpoint."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from nbkit.models import encoder_path

    tokenizer = AutoTokenizer.from_pretrained(encoder_path("minilm-l6"))
    torch.manual_seed(0)
    config = T5Config(vocab_size=tokenizer.vocab_size, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                      num_decoder_layers=2, num_heads=4, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.sep_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-t5")
    T5ForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def intent_prompt():
    from nbkit.prompts import Prompt

    return Prompt(
        "Which team should handle this customer message: refund, delivery, account or other?\n"
        "Message: {{ text }}\nTeam:",
        name="intent", target="{{ label }}", choices=["refund", "delivery", "account", "other"],
    )


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def adapter_tensors(run):
    """A run's saved adapter weights, by name."""
    from safetensors.torch import load_file

    return load_file(str(run.adapter_path / "adapter_model.safetensors"))


class SigintAt(events.Callback):
    """A real Ctrl-C (SIGINT to this process), as a kernel interrupt sends it, at one step."""

    def __init__(self, step):
        self.step = step

    def on_step(self, e):
        if e.step == self.step:
            import signal

            os.kill(os.getpid(), signal.SIGINT)
