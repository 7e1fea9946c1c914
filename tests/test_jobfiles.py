"""A tune job is a file: export from the notebook API or magic, read back with errors that name key and line."""

import sys

import pytest

import nbkit
import nbkit.training  # noqa: F401  (before any test patches models.load_model: it binds it at import)
from nbkit import models
from nbkit.data import fingerprint
from nbkit.errors import ConfigError
from nbkit.jobfiles import read_job
from nbkit.config import TuneConfig


@pytest.fixture
def no_model_loads(monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("exporting loaded a model"))


def test_export_writes_the_whole_validated_config_and_reads_back(tmp_path, intent_prompt, no_model_loads):
    path = nbkit.tune(intent_prompt, "sample:intent", export=tmp_path / "job.yaml", r=4, epochs=1, seed=3)
    job = read_job(path)
    settings = TuneConfig(**job.settings).to_dict()
    assert settings["options"] == {"r": 4, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
    assert settings["lr"] == 5e-4 and settings["seed"] == 3 and settings["data"] == "sample:intent"
    assert job.prompts["intent"] == intent_prompt.resolve_target(["text", "label"])
    assert path.read_text().startswith("# nbkit tune job")


def test_notebook_variables_are_written_beside_the_job(tmp_path, intent_prompt, no_model_loads, monkeypatch):
    import pandas as pd

    rows = pd.DataFrame(nbkit.load_data("sample:intent", split="train"))
    path = nbkit.tune(intent_prompt, "messages", namespace={"messages": rows}, export=tmp_path / "jobs" / "j.yaml")
    data = read_job(path).settings["data"]
    monkeypatch.chdir("/")  # relative paths are relative to the job file, not to where it runs
    expected = nbkit.load_data("messages", {"messages": rows})
    found = nbkit.load_data(read_job(path).settings["data"])
    assert data.endswith("j-data/intent") and set(found) == {"train", "test"}
    assert fingerprint(found["train"]) == fingerprint(expected["train"])


def test_multi_task_jobs_keep_every_prompt_and_weight(tmp_path, intent_prompt, no_model_loads):
    from nbkit.prompts import Prompt

    sentiment = Prompt("Review: {{ text }}\nSentiment:", name="sentiment", choices=["positive", "negative"])
    path = nbkit.tune([intent_prompt, sentiment], ["sample:intent", "sample:sentiment"], weights=[2, 1],
                      export=tmp_path / "multi.yaml")
    job = read_job(path)
    assert job.settings["prompt"] == ["intent", "sentiment"] and job.settings["weights"] == [2, 1]
    assert set(job.prompts) == {"intent", "sentiment"}


def _job(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


GOOD = """\
prompt: p
data: sample:intent
epochs: 1
prompts:
  p:
    template: "Message: {{ text }}"
"""


@pytest.mark.parametrize("text, field, where", [
    (GOOD + "learning_rate: 0.1\n", "learning_rate", "line 7"),
    (GOOD.replace("epochs: 1", "epochs: many"), "epochs", "line 3"),
    (GOOD.replace("epochs: 1", "batch_size: 0"), "batch_size", "line 3"),
    (GOOD.replace("data: sample:intent\n", ""), "data", "job.yaml"),
    (GOOD.replace("prompt: p", "prompt: q"), "prompt", "line 1"),
    (GOOD + "    colour: red\n", "colour", "line 4"),
    (GOOD.replace("epochs: 1", "gradient_checkpointing: yes please"), "gradient_checkpointing", "line 3"),
    (GOOD.replace("data: sample:intent", "data: [{text: a}]"), "data", "line 2"),
])
def test_bad_job_files_name_the_key_and_the_line(tmp_path, text, field, where):
    with pytest.raises(ConfigError) as e:
        read_job(_job(tmp_path, text))
    assert e.value.field == field and where in str(e.value), str(e.value)


def test_broken_yaml_says_where(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML at line 2"):
        read_job(_job(tmp_path, "prompt: p\ndata: x: y\n"))


def test_set_overrides_settings_and_method_options(tmp_path):
    job = read_job(_job(tmp_path, GOOD), ["lr=1e-4", "options.r=16", "gradient_checkpointing=true", "name=x"])
    assert job.settings["lr"] == 1e-4 and job.settings["options"] == {"r": 16}
    assert job.settings["gradient_checkpointing"] is True and job.settings["name"] == "x"
    with pytest.raises(ConfigError, match="from --set"):
        read_job(_job(tmp_path, GOOD), ["epochs=-1"])
    with pytest.raises(ConfigError, match="`lrate` is not a tune setting"):
        read_job(_job(tmp_path, GOOD), ["lrate=1"])


def test_cli_reports_job_errors_in_one_line(tmp_path):
    from conftest import run

    path = _job(tmp_path, GOOD + "learning_rate: 0.1\n")
    done = run([sys.executable, "-m", "nbkit", "tune", "--config", str(path)])
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"nbkit: error: `learning_rate` is not a tune setting (job.yaml, line 7); settings: "
        + ", ".join(sorted(f for f in TuneConfig.__dataclass_fields__))]


def test_magic_export_writes_the_job_without_training(ip, tmp_path, no_model_loads, capsys):
    ip.run_cell_magic("prompt", 'ex --target "{{ label }}" --choices refund,delivery,account,other',
                      "Message: {{ text }}\nTeam:")
    ip.run_line_magic("tune", f"--prompt ex --data sample:intent --epochs 2 --export {tmp_path}/ex.yaml")
    assert "nbkit tune --config" in capsys.readouterr().out
    assert read_job(tmp_path / "ex.yaml").settings["epochs"] == 2


@pytest.mark.parametrize("env, kwargs, field", [
    ({"WORLD_SIZE": "2", "RANK": "0"}, {"batch_size": 3}, "batch_size"),
    ({"WORLD_SIZE": "3", "RANK": "0"}, {}, "batch_size"),
])
def test_settings_a_multi_process_run_cannot_take_fail_before_loading(env, kwargs, field, intent_prompt,
                                                                      no_model_loads, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as e:
        nbkit.tune(intent_prompt, "sample:intent", **kwargs)
    assert e.value.field == field and "processes" in str(e.value)


def test_more_processes_than_rows_fail_before_loading(intent_prompt, no_model_loads, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    rows = [{"text": f"message {i}", "label": "refund"} for i in range(5)]
    with pytest.raises(ConfigError, match="4 training rows for 8 processes"):
        nbkit.tune(intent_prompt, rows)


def test_qlora_under_fsdp_packs_4bit_weights_in_the_compute_dtype(monkeypatch):
    pytest.importorskip("bitsandbytes")
    import torch

    assert models.quantization_config("4bit", "cpu").bnb_4bit_quant_storage == torch.uint8
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch sets with an FSDP config
    config = models.quantization_config("4bit", "cpu")
    assert config.bnb_4bit_quant_storage == config.bnb_4bit_compute_dtype == torch.float32
