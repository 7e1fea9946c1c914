"""Multi-task training: one adapter, several prompts and data sets, a weighted loss, each task's loss logged."""

import json

import pytest
import torch

import nbkit
from nbkit import events, models
from nbkit.errors import ConfigError
from nbkit.prompts import Prompt
from nbkit.config import TuneConfig, pair_tasks, task_names
from nbkit.training.dev import TaskLosses
from nbkit.training.trainer import collate


@pytest.fixture
def sentiment_prompt():
    return Prompt("Is this review positive or negative?\nReview: {{ text }}\nSentiment:", name="sentiment",
                  target="{{ label }}", choices=["positive", "negative"])


def _batch(smol, items):
    """Collated training examples of (prompt, row, task) items, as the Trainer would see them."""
    from nbkit.encoding import training_example

    examples = []
    for prompt, row, task in items:
        example, _ = training_example(prompt, row, smol.tokenizer, 256)
        examples.append({**example, "task": task})
    return collate(smol.tokenizer.pad_token_id)(examples)


def _rows(name, n):
    return list(nbkit.load_data(f"sample:{name}", split="train"))[:n]


@pytest.fixture
def mixed(smol, intent_prompt, sentiment_prompt):
    items = [(intent_prompt, r, 0) for r in _rows("intent", 3)] + [(sentiment_prompt, r, 1) for r in _rows("sentiment", 2)]
    return items, _batch(smol, items)


def _model_loss(smol, batch):
    with torch.no_grad():
        return smol.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss


def _task_loss(smol, batch, weights):
    losses = TaskLosses(["intent", "sentiment"], weights)
    with torch.no_grad():
        logits = smol.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return losses(logits, batch["labels"], batch["task"]), losses


def test_equal_weights_give_the_models_own_loss(smol, mixed):
    _, batch = mixed
    loss, _ = _task_loss(smol, batch, [1, 1])
    assert torch.allclose(loss, _model_loss(smol, batch), atol=1e-5)


def test_a_task_of_weight_two_counts_as_if_its_examples_were_there_twice(smol, mixed):
    items, batch = mixed
    doubled = _batch(smol, items + [i for i in items if i[2] == 1])
    loss, _ = _task_loss(smol, batch, [1, 2])
    assert torch.allclose(loss, _model_loss(smol, doubled), atol=1e-5)
    assert not torch.allclose(loss, _model_loss(smol, batch), atol=1e-3)  # the weight changed something


def test_each_tasks_logged_loss_is_its_own_mean_token_loss(smol, mixed):
    items, batch = mixed
    _, losses = _task_loss(smol, batch, [1, 3])
    logged = losses.flush()
    for task, name in enumerate(["intent", "sentiment"]):
        alone = _batch(smol, [i for i in items if i[2] == task])
        assert logged[f"task_loss:{name}"] == pytest.approx(float(_model_loss(smol, alone)), abs=1e-5)
    assert losses.flush() == {}  # each log line covers the steps since the last one


def test_pairing_and_naming_tasks():
    assert pair_tasks(["a", "b"], "sample:intent") == (["a", "b"], ["sample:intent"] * 2)
    assert pair_tasks("a", ["x.csv", "y.csv"]) == (["a", "a"], ["x.csv", "y.csv"])
    rows = [{"text": "t", "label": "l"}]
    assert pair_tasks("a", rows) == (["a"], [rows])  # a list of dicts is one data set
    assert task_names(["a", "a", "b"]) == ["a-1", "a-2", "b"]
    with pytest.raises(ConfigError) as e:
        pair_tasks(["a", "b", "c"], ["x", "y"])
    assert e.value.field == "data" and "3 prompts" in str(e.value)


@pytest.mark.parametrize("kwargs, field", [
    ({"weights": [1]}, "weights"), ({"weights": [1, 0]}, "weights"), ({"weights": [1, float("nan")]}, "weights"),
    ({"data": ["sample:intent", "sample:sentiment", "sample:intent"]}, "data"),
])
def test_bad_multi_task_settings_fail_before_any_model_loads(kwargs, field, intent_prompt, sentiment_prompt,
                                                            monkeypatch):
    loads = []
    monkeypatch.setattr(models, "resolve", lambda spec: loads.append(spec))
    kwargs = {"data": ["sample:intent", "sample:sentiment"], **kwargs}
    with pytest.raises(ConfigError) as e:
        nbkit.tune([intent_prompt, sentiment_prompt], **kwargs)
    assert e.value.field == field and loads == []


def test_multi_task_config_roundtrips():
    cfg = TuneConfig(prompt=["a", "b"], data=["x", "y"], weights=[1.0, 2.0])
    assert TuneConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.tasks == [("a", "x", 1.0), ("b", "y", 2.0)]


def test_progress_shows_each_tasks_loss(capsys):
    from nbkit.magics.widgets import TuneWidget

    step = events.Step(step=4, total_steps=4, epoch=1.0, loss=0.5, learning_rate=1e-4, tokens_per_second=1.0,
                       elapsed=4.0, eta=0.0, task_losses={"intent": 0.75, "sentiment": 0.25})
    w = TuneWidget()
    w.on_step(step)
    assert "intent 0.7500, sentiment 0.2500" in w.status.value
    events.PlainProgress().on_step(step)
    assert "(intent 0.7500, sentiment 0.2500)" in capsys.readouterr().out


@pytest.mark.slow
def test_one_adapter_learns_two_tasks_with_weights(intent_prompt, sentiment_prompt):
    run = nbkit.tune([intent_prompt, sentiment_prompt], ["sample:intent", "sample:sentiment"], weights=[2, 1],
                     max_steps=36, dev=0.1, eval_every=18, name="both")
    tasks = json.loads((run.path / "tasks.json").read_text())
    assert [(t["name"], t["data"], t["weight"]) for t in tasks] == [
        ("intent", "sample:intent", 2.0), ("sentiment", "sample:sentiment", 1.0)]
    assert run.config["prompt"] == ["intent", "sentiment"] and run.config["weights"] == [2, 1]

    for name in ("intent", "sentiment"):  # each task's own loss is logged and falls
        logged = [row[f"loss_{name}"] for row in run.history if f"loss_{name}" in row]
        assert len(logged) >= 6 and run.metrics[f"train_loss_{name}"] < run.metrics[f"first_loss_{name}"] / 2
    evaluations = run.dev_history
    assert len(evaluations) == 2
    for e in evaluations:  # the selection metric is the mean over tasks
        assert e["eval_accuracy"] == pytest.approx((e["eval_intent_accuracy"] + e["eval_sentiment_accuracy"]) / 2)

    for prompt, data in ((intent_prompt, "sample:intent"), (sentiment_prompt, "sample:sentiment")):
        frame = nbkit.evaluate(prompt, run, data, limit=40).frame  # the run is scored with this data's prompt
        zero_shot, tuned = frame.loc[prompt.name, "accuracy"], frame.loc[f"{prompt.name} + both", "accuracy"]
        assert tuned >= zero_shot + 0.1, frame
    with pytest.raises(ConfigError) as e:
        nbkit.evaluate(run=run)
    assert "intent on sample:intent; sentiment on sample:sentiment" in str(e.value)
