"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) against the embedded model."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("NBKIT_PROGRESS", "plain")


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


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2 (converted to the cache once per machine), shared by the session."""
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
