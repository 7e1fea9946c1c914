import dataclasses
import json

import pytest

import nbkit
from nbkit import models
from nbkit.errors import ConfigError, UnknownNameError
from nbkit.methods import available_methods, get_method
from nbkit.methods.lora import LoraOptions
from nbkit.prompts import Prompt
from nbkit.config import TuneConfig


@pytest.mark.parametrize("kwargs, field", [
    ({"lr": 0}, "lr"), ({"lr": -1e-4}, "lr"), ({"epochs": -1}, "epochs"), ({"epochs": 0}, "epochs"),
    ({"batch_size": 0}, "batch_size"), ({"max_steps": 0}, "max_steps"), ({"max_length": 0}, "max_length"),
    ({"warmup": 1.5}, "warmup"), ({"r": 0}, "r"), ({"alpha": 0}, "alpha"), ({"dropout": 1.0}, "dropout"),
    ({"method": "nope"}, None), ({"name": "a/b"}, "name"), ({"bogus_option": 3}, "bogus_option"),
])
def test_impossible_settings_fail_before_any_model_loads(kwargs, field, intent_prompt, monkeypatch):
    loads = []
    monkeypatch.setattr(models, "resolve", lambda spec: loads.append(spec))
    with pytest.raises((ConfigError, UnknownNameError)) as e:
        nbkit.tune(intent_prompt, "sample:intent", **kwargs)
    assert loads == []  # (no time bound: the first call imports the training stack, 10 s and more on a busy CI)
    if field:
        assert e.value.field == field and field in str(e.value)
    else:
        assert "lora" in str(e.value) and "qlora" in str(e.value)


def test_empty_dataset_fails_before_loading(intent_prompt):
    with pytest.raises(nbkit.errors.DataError):
        nbkit.tune(intent_prompt, [])


def test_missing_column_names_the_variable(intent_prompt):
    rows = [{"message": f"m{i}", "label": "refund"} for i in range(10)]
    with pytest.raises(nbkit.errors.TemplateError) as e:
        nbkit.tune(intent_prompt, rows)
    assert e.value.variable == "text" and "message" in str(e.value)


def test_method_registry():
    assert {"lora", "qlora"} <= set(available_methods())
    assert get_method("qlora").quantize == "4bit" and get_method("lora").quantize is None
    with pytest.raises(UnknownNameError) as e:
        get_method("ia4")
    assert "lora" in str(e.value)


CONFIGS = [
    TuneConfig(prompt="p", data="sample:intent", options={"r": 4}),
    LoraOptions(r=4, alpha=8, dropout=0.0, target_modules="q_proj,v_proj"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_configs_roundtrip_through_sorted_json(config):
    data = json.loads(json.dumps(dataclasses.asdict(config), sort_keys=True))
    assert type(config)(**data) == config


def test_prompt_roundtrip():
    p = Prompt("x {{ text }}", name="p", target="{{ label }}", choices=["a", "b"], system="s", shots=2)
    assert Prompt.from_dict(json.loads(json.dumps(p.to_dict(), sort_keys=True))) == p


def test_tune_config_rejects_unknown_keys():
    with pytest.raises(ConfigError) as e:
        TuneConfig.from_dict({"prompt": "p", "data": "d", "learning_rate": 1})
    assert e.value.field == "learning_rate"
