"""Encoder classification by SetFit, the default of --task classification, against the setfit package itself."""

from __future__ import annotations

import io

import pytest

from nbkit.errors import ConfigError, DataError

# a small 3-way task written for this test (no nbkit sample): home-assistant requests
ROWS = {
    "music": ["play some jazz", "skip this song", "put on my workout playlist", "pause the music",
              "next track please", "play the radio"],
    "weather": ["will it rain tomorrow", "how cold is it outside", "do I need an umbrella", "is it sunny in Oslo",
                "what is the forecast for Friday", "will it snow tonight"],
    "timer": ["set a timer for ten minutes", "wake me up at six", "cancel my alarm", "remind me in an hour",
              "start a five minute countdown", "snooze for nine minutes"],
}
TRAIN = [{"text": t, "label": label} for label, texts in ROWS.items() for t in texts]
TEST = [{"text": "turn the volume up on this tune", "label": "music"},
        {"text": "how hot will it get this afternoon", "label": "weather"},
        {"text": "set an alarm for seven", "label": "timer"}]


def _prompt():
    from nbkit.prompts import Prompt

    return Prompt("Request: {{ text }}", name="home", target="{{ label }}", choices=list(ROWS))


def test_the_method_and_epochs_default_by_task():
    from nbkit.config import TuneConfig

    cls = TuneConfig(prompt="p", data="d", task="classification")
    assert (cls.method, cls.epochs) == ("setfit", 1)
    gen = TuneConfig(prompt="p", data="d")
    assert (gen.method, gen.epochs) == ("lora", 3)
    given = TuneConfig(prompt="p", data="d", task="classification", method="lora", epochs=2)
    assert (given.method, given.epochs) == ("lora", 2)


def test_pairs_come_from_setfits_sampler_balanced_and_seeded():
    from nbkit.methods.setfit import SetFitOptions
    from nbkit.training.setfit import setfit_pairs

    texts = [r["text"] for r in TRAIN]
    labels = [list(ROWS).index(r["label"]) for r in TRAIN]
    label_of = dict(zip(texts, labels))
    pairs = setfit_pairs(texts, labels, 2)
    assert len(pairs) == 2 * 2 * len(texts)  # `iterations` positive and negative pairs per row
    assert sum(y for *_, y in pairs) == len(pairs) / 2
    assert all((label_of[a] == label_of[b]) == (y == 1.0) for a, b, y in pairs)
    assert setfit_pairs(texts, labels, 2) == pairs  # the sampler's own fixed seed; the run's orders the batches
    with pytest.raises(ConfigError, match="one label"):
        setfit_pairs(texts[:3], [0, 0, 0], 2)
    # pairs per row from the data size: at least 800 pairs on small data, 2 per row on large
    assert [SetFitOptions().pairs_per_row(n) for n in (18, 80, 184, 1000)] == [23, 5, 3, 2]
    assert SetFitOptions(iterations=7).pairs_per_row(1000) == 7
    with pytest.raises(ConfigError, match="iterations"):
        SetFitOptions(iterations=0)


def test_bad_settings_are_refused_before_weights_load():
    from nbkit import tune

    with pytest.raises(ConfigError, match="trains a classifier"):
        tune(None, [{"query": "q", "positive": "p"}] * 4, task="embedding", method="setfit")
    with pytest.raises(ConfigError, match="neither prompt nor a column"):
        tune(_prompt(), {"train": TRAIN}, task="classification", input="body")
    with pytest.raises(ConfigError, match="is not supported"):
        tune(None, [{"query": "q", "positive": "p"}] * 4, task="embedding", input="text")
    with pytest.raises(DataError, match="at least two labels"):
        tune(_prompt(), {"train": [r for r in TRAIN if r["label"] == "music"]}, task="classification")
    with pytest.raises(ConfigError, match="does not apply to a"):
        tune(_prompt(), {"train": TRAIN}, method="setfit")  # a decoder


def test_a_setfit_run_is_a_setfit_model_that_nbkit_reloads_and_scores(capsys):
    """The run trains in nbkit's loop (progress, metrics), saves a SetFitModel the package loads as is,
    and %evaluate's predictions are that model's, also after the session forgot the loaded copy."""
    from setfit import SetFitModel

    from nbkit import evaluate, tune
    from nbkit.events import PlainProgress
    from nbkit.session import current

    stream = io.StringIO()
    run = tune(_prompt(), {"train": TRAIN, "test": TEST}, task="classification", iterations=2, name="home-setfit",
               callbacks=[PlainProgress(stream=stream)])
    assert run.status == "completed" and run.config["method"] == "setfit" and run.config["labels"] == list(ROWS)
    assert run.metrics["examples"] == 2 * 2 * len(TRAIN) and run.metrics["steps"] == 9
    assert run.metrics["head_loss"] < run.metrics["chance_loss"] and "warning" not in run.metrics
    assert "setfit on minilm-l6" in stream.getvalue() and "tune completed" in stream.getvalue()
    assert run.config["input"] == "text"  # the template reads one column: the encoder reads it as it is
    inputs = [r["text"] for r in TEST]
    theirs = list(SetFitModel.from_pretrained(str(run.adapter_path)).predict(inputs))
    frame = evaluate(_prompt(), run, {"train": TRAIN, "test": TEST}).frame
    for key in [k for k in current().cache if isinstance(k, tuple) and k[0] == "setfit"]:
        del current().cache[key]
    again = evaluate(None, run.path, {"train": TRAIN, "test": TEST}).frame
    expected = sum(t == r["label"] for t, r in zip(theirs, TEST)) / len(TEST)
    assert frame.iloc[-1]["accuracy"] == again.iloc[-1]["accuracy"] == pytest.approx(expected)


def test_the_input_is_the_column_or_the_rendered_prompt():
    from nbkit import tune
    from nbkit.predict.encoder import encoder_inputs
    from nbkit.prompts import Prompt

    run = tune(_prompt(), {"train": TRAIN}, task="classification", iterations=1, input="prompt", name="rendered")
    assert run.config["input"] == "prompt"
    assert encoder_inputs(run, _prompt(), TEST[:1]) == ["Request: " + TEST[0]["text"]]
    two = Prompt("{{ text }} ({{ source }})", name="two", target="{{ label }}", choices=list(ROWS))
    rows = [{**r, "source": "app"} for r in TRAIN]
    run = tune(two, {"train": rows}, task="classification", iterations=1, name="two-columns")
    assert run.config["input"] == "prompt"  # two columns: the template says how they go together
    column = tune(_prompt(), {"train": TRAIN}, task="classification", iterations=1, name="column")
    assert column.config["input"] == "text"
    with pytest.raises(DataError, match="no 'text' column"):
        encoder_inputs(column, _prompt(), [{"body": "x"}])


def test_a_classifier_that_does_not_learn_says_so():
    """A head whose loss ends at chance completes, but its metrics, the plain lines and the widget say
    it learned nothing instead of reporting success silently."""
    from magics.widgets import TuneWidget
    from nbkit import tune
    from nbkit.events import End, PlainProgress

    stream = io.StringIO()
    run = tune(_prompt(), {"train": TRAIN}, task="classification", method="lora", lr=1e-9, epochs=1,
               name="stuck", callbacks=[PlainProgress(stream=stream)])
    assert run.status == "completed"
    assert run.metrics["warning"].startswith("did not learn: the training loss")
    assert "warning: did not learn" in stream.getvalue() and "did not learn" in repr(run)
    widget = TuneWidget()
    widget.on_end(End("completed", 3.0, 3, metrics=run.metrics, run=run))
    assert "did not learn" in widget.status.value and widget.bar.bar_style == "warning"



def test_a_run_tuned_again_under_its_name_is_evaluated_anew():
    """--overwrite writes a new model under the same path; the session must not serve the old one it loaded
    (it did: every run cache was keyed by path alone)."""
    from nbkit import evaluate, tune

    data = {"train": TRAIN, "test": TEST}
    tune(_prompt(), data, task="classification", iterations=1, name="again")
    first = evaluate(_prompt(), "again", data).frame.iloc[-1]["accuracy"]
    swapped = {"music": "timer", "timer": "music", "weather": "weather"}
    tune(_prompt(), {"train": [{**r, "label": swapped[r["label"]]} for r in TRAIN], "test": TEST},
         task="classification", iterations=1, name="again", overwrite=True)
    second = evaluate(_prompt(), "again", data).frame.iloc[-1]["accuracy"]
    assert first > second  # the relabelled run calls music timer: the same test rows score worse
