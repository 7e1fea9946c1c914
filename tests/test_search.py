"""Automatic prompt search on the embedded model: candidates, ranking on dev rows, the best registered."""

import pytest

import nbkit
import nbkit.evaluation  # noqa: F401  (before any test patches models.load_model: it binds it at import)
from nbkit import models
from nbkit.errors import ConfigError
from nbkit.prompts import PROMPTS, Prompt
from nbkit.search import _variant, instruction_of


@pytest.fixture
def sentiment():
    return Prompt("Is this review positive or negative?\nReview: {{ text }}\nAnswer:", name="sentiment",
                  target="{{ label }}", choices=["positive", "negative"])


def test_label_words_become_a_self_contained_target(sentiment):
    p = _variant(sentiment, {"positive": "great", "negative": "awful"}, 2, "balanced")
    assert p.choices == ["great", "awful"] and p.shots == 2 and p.selection == "balanced"
    assert p.render_target({"text": "x", "label": "negative"}) == "awful"
    assert Prompt.from_dict(p.to_dict()).render_target({"text": "x", "label": "positive"}) == "great"


def test_instruction_is_the_text_before_the_first_variable(sentiment):
    assert instruction_of(sentiment) == "Is this review positive or negative?"
    assert instruction_of(Prompt("Review: {{ text }}", name="bare")) == ""


def test_balanced_shots_cover_the_labels():
    rows = list(nbkit.load_data("sample:intent", split="train"))
    p = Prompt("M: {{ text }}", target="{{ label }}", shots=4, selection="balanced")
    for seed in range(5):
        assert sorted(p.render_target(r) for r in p.pick_shots(rows, seed=seed)) == [
            "account", "delivery", "other", "refund"]


@pytest.mark.parametrize("kwargs, field", [
    ({"words": [{"positive": "great"}]}, "words"),  # no word for negative
    ({"words": [{"positive": "ok", "negative": "ok"}]}, "words"),
    ({"shots": [-1]}, "shots"), ({"selection": ["closest"]}, "selection"), ({"dev": "test"}, "dev"),
    ({"dev": 1000}, "dev"), ({"paraphrases": -2}, "paraphrases"),
])
def test_bad_search_settings_fail_before_any_model_loads(sentiment, kwargs, field, monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ConfigError) as e:
        nbkit.search_prompts(sentiment, "sample:sentiment", **kwargs)
    assert e.value.field == field


@pytest.mark.slow
def test_search_ranks_candidates_on_dev_rows_and_registers_the_best(ip):
    ip.run_cell_magic("prompt", 'intent --target "{{ label }}" --choices refund,delivery,account,other',
                      "Which team should handle this customer message?\nMessage: {{ text }}\nTeam:")
    report = ip.run_line_magic(
        "evaluate", "--search --prompt intent --data sample:intent --shots 0,4 --selection balanced "
                    "--words refund=refund,delivery=shipping,account=login,other=other --paraphrases 1 --dev 32 "
                    "--name intent-searched")
    frame = report.frame
    # (the prompt + 1 paraphrase) x 2 word sets x (0 shots, 4 balanced shots)
    assert len(frame) == len(report.candidates) == 2 * 2 * 2 and (frame["n"] == 32).all()
    assert list(frame["accuracy"]) == sorted(frame["accuracy"], reverse=True)
    assert set(frame["template"]) == {"as written", "paraphrase 1"}
    for label in frame.index[frame["template"] != "as written"]:
        template = report.candidates[label].template
        assert template.endswith("Message: {{ text }}\nTeam:") and not template.startswith("Which team should")
    written = frame[(frame["template"] == "as written") & (frame["shots"] == 0)
                    & (frame["words"] == "refund, delivery, account, other")]["accuracy"].iloc[0]
    assert frame["accuracy"].iloc[0] > written, frame  # the search found a better prompt than the hand-written one
    assert PROMPTS["intent-searched"] is report.best and report.best.name == "intent-searched"
    test = nbkit.evaluate(["intent", "intent-searched"], data="sample:intent", limit=32)  # rows never searched on
    assert set(test.frame.index) == {"intent", "intent-searched"}


def test_paraphrases_come_from_the_base_model_even_after_an_adapter_was_used(smol, sentiment, tmp_path):
    from peft import LoraConfig, get_peft_model

    from nbkit.search import paraphrase

    clean = paraphrase(sentiment, smol, 2, seed=0)
    base = nbkit.load_model("smollm2-135m", fresh=True).model
    adapter = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")  # random, non-zero: it changes what the model says
    with smol.adapter(tmp_path / "adapter"):
        pass  # %evaluate leaves the last adapter attached to the session's model
    assert paraphrase(sentiment, smol, 2, seed=0) == clean and clean
