"""Nothing lost, nothing escapes: the cases of docs/reliability.md (bad input, faults), each with what it gets.

Faults run real processes where a user's would be real: a training process killed with SIGKILL
while it writes a checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import nbkit
from nbkit import models
from nbkit.errors import ConfigError, DataError, NbkitError, TemplateError, TrainingFailed
from nbkit.prompts import Prompt

ROWS = [{"text": f"The {w} meeting moved to {d}.", "summary": f"{w} to {d}"}
        for w, d in [("budget", "monday"), ("design", "friday"), ("sales", "tuesday"), ("hiring", "thursday"),
                     ("support", "wednesday"), ("launch", "monday"), ("review", "friday"), ("planning", "tuesday")]]


@pytest.fixture
def no_weights(monkeypatch):
    """Any model load fails the test: these mistakes must be refused before one."""
    import nbkit.training.decoder

    def refuse(*a, **k):
        pytest.fail("loaded a model")

    for module in (models, nbkit.training.decoder):
        monkeypatch.setattr(module, "load_model", refuse)


def _brief(name="brief"):
    return Prompt("summarize: {{ text }}", name=name, target="{{ summary }}")


# -- data loss and escapes ------------------------------------------------------------------------
def test_overwrite_keeps_the_old_run_until_the_new_one_completes(tiny_t5):
    old = nbkit.tune(_brief(), ROWS, model=tiny_t5, batch_size=4, epochs=1, name="keep", callbacks=[])
    adapter = (old.adapter_path / "adapter_model.safetensors").read_bytes()

    class Fail:
        def on_begin(self, e): ...
        def on_evaluate(self, e): ...
        def on_note(self, t): ...
        def on_end(self, e): ...

        def on_step(self, e):
            raise RuntimeError("late failure")

    with pytest.raises(TrainingFailed):
        nbkit.tune(_brief(), ROWS, model=tiny_t5, batch_size=4, epochs=1, name="keep", overwrite=True,
                   callbacks=[Fail()])
    assert old.status == "completed" and (old.adapter_path / "adapter_model.safetensors").read_bytes() == adapter
    new = nbkit.tune(_brief(), ROWS, model=tiny_t5, batch_size=4, epochs=1, lr=5e-3, name="keep",
                     overwrite=True, callbacks=[])
    assert new.status == "completed" and new.config["lr"] == 5e-3
    assert [p.name for p in new.path.parent.iterdir()] == ["keep"]  # nothing set aside is left behind


def test_overwrite_of_a_decoder_run_that_fails_keeps_the_old_one(intent_prompt):
    class Fail(nbkit.events.Callback):
        def on_step(self, e):
            raise RuntimeError("late failure")

    old = nbkit.tune(intent_prompt, "sample:intent", max_steps=1, name="dec-keep", callbacks=[])
    with pytest.raises(TrainingFailed):
        nbkit.tune(intent_prompt, "sample:intent", max_steps=2, name="dec-keep", overwrite=True, callbacks=[Fail()])
    assert old.status == "completed" and old.has_adapter() and old.metrics["steps"] == 1


def test_a_prompt_name_never_becomes_a_path(tiny_t5, tmp_path):
    run = nbkit.tune(_brief("../../x"), ROWS, model=tiny_t5, batch_size=4, epochs=1, callbacks=[])
    assert run.path.parent == Path(os.environ["NBKIT_RUNS_DIR"]) and run.name == "x-lora"
    run = nbkit.tune(_brief("/abs/y"), ROWS, model=tiny_t5, batch_size=4, epochs=1, callbacks=[])
    assert run.path.parent == Path(os.environ["NBKIT_RUNS_DIR"]) and run.name == "abs-y-lora"
    for name in ("a\x00b", "../x", "/tmp/x", "a\\b"):
        with pytest.raises(ConfigError) as e:
            nbkit.tune(_brief(), ROWS, model=tiny_t5, name=name)
        assert e.value.field == "name"
    with pytest.raises(ConfigError):
        Prompt("{{ text }}", name="a\x00b")


def test_a_run_that_fails_before_training_leaves_nothing_and_takes_no_name(intent_prompt, monkeypatch):
    import nbkit.training.decoder as decoder

    def broken(*a, **k):
        raise RuntimeError("could not build the trainer")

    with monkeypatch.context() as patched:
        patched.setattr(decoder, "build_trainer", broken)
        with pytest.raises(RuntimeError):
            nbkit.tune(intent_prompt, "sample:intent", max_steps=1, callbacks=[])
    root = Path(os.environ["NBKIT_RUNS_DIR"])
    assert not root.exists() or not any(root.iterdir())
    run = nbkit.tune(intent_prompt, "sample:intent", max_steps=1, callbacks=[])
    assert run.name == "intent-lora"  # not intent-lora-2


KILLED = textwrap.dedent("""
    import os, sys, time
    import transformers
    save = transformers.Trainer._save_checkpoint
    def save_then_die(self, model, trial):
        if self.state.global_step < 4:
            return save(self, model, trial)
        # what a process killed mid-save leaves: the folder with its first file only
        folder = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        open(os.path.join(folder, "README.md"), "w").write("partial")
        open(sys.argv[1], "w").write("saving")
        time.sleep(600)
    transformers.Trainer._save_checkpoint = save_then_die
    import nbkit
    prompt = nbkit.Prompt("Message: {{ text }}\\nTeam:", name="intent", choices=["refund", "delivery", "account", "other"])
    nbkit.tune(prompt, "sample:intent", max_steps=6, save_every=2, name="killed", callbacks=[])
""")


@pytest.mark.slow
def test_kill_9_while_a_checkpoint_is_written_leaves_a_run_that_resumes(tmp_path, intent_prompt):
    marker = tmp_path / "saving"
    script = tmp_path / "train.py"
    script.write_text(KILLED)
    child = subprocess.Popen([sys.executable, str(script), str(marker)], env=os.environ.copy())
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert marker.exists(), "the training process never reached its second checkpoint"
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    run = nbkit.Run(Path(os.environ["NBKIT_RUNS_DIR"]) / "killed")
    assert json.loads((run.path / "status.json").read_text())["status"] == "running"
    assert run.status == "interrupted"  # its process is gone: it does not read as running
    assert {p.name for p in (run.path / "checkpoints").iterdir()} == {"checkpoint-2", "checkpoint-4"}
    resumed = nbkit.tune(Prompt("Message: {{ text }}\nTeam:", name="intent",
                                choices=["refund", "delivery", "account", "other"]),
                         "sample:intent", max_steps=6, save_every=2, name="killed", resume=True, callbacks=[])
    assert resumed.status == "completed" and resumed.has_adapter()
    steps = [r["step"] for r in resumed.history]
    assert steps == sorted(set(steps)) == list(range(1, 7))  # the resumed steps are logged once


def test_resume_of_a_completed_run_does_nothing(intent_prompt, capsys):
    run = nbkit.tune(intent_prompt, "sample:intent", max_steps=2, name="done")
    history, adapter = run.history, (run.adapter_path / "adapter_model.safetensors").read_bytes()
    again = nbkit.tune(intent_prompt, "sample:intent", max_steps=2, name="done", resume=True)
    assert "is complete" in capsys.readouterr().out
    assert again.history == history and (again.adapter_path / "adapter_model.safetensors").read_bytes() == adapter


# -- late or raw errors: each a clear error before any weights load -------------------------------------
@pytest.mark.parametrize("kwargs, field", [
    ({"epochs": math.nan}, "epochs"), ({"epochs": math.inf}, "epochs"), ({"lr": math.inf}, "lr"),
    ({"lr": math.nan}, "lr"), ({"method": "prompt-tuning", "virtual_tokens": 100_000_000}, "virtual_tokens"),
    ({"max_length": 1}, "max_length"), ({"warmup": math.nan}, "warmup"),
])
def test_impossible_numbers_are_refused_before_any_weights_load(kwargs, field, intent_prompt, no_weights):
    with pytest.raises(ConfigError) as e:
        nbkit.tune(intent_prompt, "sample:intent", **kwargs)
    assert e.value.field == field


@pytest.mark.parametrize("prompt, field", [
    ({"template": "Message: {{ text }}", "system": [1, 2]}, "system"),
    ({"template": 123}, "template"),
    ({"template": "{{ text }}", "choices": {"a": 1}}, "choices"),
])
def test_a_job_file_with_wrong_types_is_a_config_error(prompt, field, tmp_path):
    from nbkit.jobfiles import read_job

    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"prompt": "p", "data": "sample:intent", "prompts": {"p": prompt}}))
    with pytest.raises(ConfigError) as e:
        read_job(job)
    assert e.value.field == field


def test_comma_separated_choices_are_label_words():
    assert Prompt("{{ text }}", choices="yes,no").choices == ["yes", "no"]


def test_a_constant_that_never_ends_is_refused_not_computed():
    started = time.monotonic()
    prompt = Prompt("{{ 9**(9**9) }} {{ text }}")
    with pytest.raises(TemplateError, match="too large"):
        prompt.render({"text": "x"})
    assert time.monotonic() - started < 2
    assert Prompt("{{ 2**10 }}").render({}) == "1024"


def test_bad_data_files_are_data_errors_naming_the_place(tmp_path):
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    with pytest.raises(DataError, match="line 2"):
        nbkit.load_data(str(bad_line))
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "two"}\n')
    with pytest.raises(DataError, match="column 'label'.*record 0.*record 1"):
        nbkit.load_data(str(mixed))
    for content in ('{"train": 3}', "[1, 2]", '"text"'):
        shaped = tmp_path / "shaped.json"
        shaped.write_text(content)
        with pytest.raises(DataError, match="shaped.json"):
            nbkit.load_data(str(shaped))
    with pytest.raises(DataError, match="column 'text'"):
        nbkit.load_data([{"text": "a", "label": "x"}, {"text": 2, "label": "y"}])


def test_evaluate_fails_when_every_target_failed(intent_prompt, monkeypatch):
    import nbkit.predict as predict

    def broken(*a, **k):
        raise RuntimeError("the scorer broke")

    monkeypatch.setitem(predict.PREDICTORS, "decoder", broken)
    with pytest.raises(NbkitError, match="every target failed.*the scorer broke"):
        nbkit.evaluate(intent_prompt, None, "sample:intent", limit=4)


def test_nbkit_run_on_a_file_that_is_not_a_notebook_is_one_line(tmp_path, capsys):
    from nbkit.cli import main

    for name, content in [("job.py", "print(1)"), ("bad.ipynb", "{not json"), ("wrong.ipynb", '{"cells": 3}')]:
        (tmp_path / name).write_text(content)
        assert main(["run", str(tmp_path / name)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("nbkit: error:") and len(err.splitlines()) == 1 and "not" in err
    assert "running" not in capsys.readouterr().out


def test_export_into_an_existing_folder_does_not_suggest_resume(tmp_path):
    from nbkit.runs import Run

    (tmp_path / "out").mkdir()
    run = Run.create("r")
    (run.path / "config.json").write_text("{}")
    (run.adapter_path).mkdir()
    (run.adapter_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError) as e:
        nbkit.export(run, tmp_path / "out")
    assert "--overwrite" in str(e.value) and "--resume" not in str(e.value)


def test_labels_chosen_by_text_say_whether_the_server_sent_log_probabilities():
    from nbkit.predict.api import predict

    class Server:
        name = "m"

        def __init__(self, top):
            self.top = top

        def map(self, endpoint, bodies):
            content = [{"top_logprobs": self.top}] if self.top else None
            return [{"choices": [{"message": {"content": "yes"}, "logprobs": {"content": content}}]}
                    for _ in bodies], []

    prompt = Prompt("Q: {{ text }}", choices=["yes", "no"], target="{{ label }}")
    rows = [{"text": "a", "label": "yes"}]
    _, how, _ = predict(Server([{"token": "maybe", "logprob": -0.1}]), prompt, rows, [])
    assert "returned log-probabilities, but none" in how
    _, how, _ = predict(Server(None), prompt, rows, [])
    assert "returned no log-probabilities" in how


def test_a_huge_job_file_is_refused_before_it_is_parsed(tmp_path):
    from nbkit.jobfiles import read_job

    job = tmp_path / "job.yaml"
    job.write_text("prompt: p\ndata: sample:intent\n" + "".join(f"key{i}: {i}\n" for i in range(700_000)))
    started = time.monotonic()
    with pytest.raises(ConfigError, match="bytes"):
        read_job(job)
    assert time.monotonic() - started < 2
